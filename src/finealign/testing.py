"""The aligner contract as one call, for plugin authors' own tests (and finealign's):

    from finealign.testing import check_aligner
    def test_my_aligner_keeps_the_contract():
        check_aligner("my_aligner")                     # a registered name (plugins included)
        check_aligner(lambda **kw: MyAligner(MyConfig(**kw)))   # or any factory taking options

Each check raises AssertionError naming the broken clause: output shape and dtype; padding
exactness (what padded tokens hold changes nothing); order of tokens (padding moved elsewhere
changes nothing); padding invariance (the same item scored alone, beside longer and shorter
items, and with extra padding slots gets the same score: catches a mean over all slots, padding
included, that random masks let through); chunk invariance (block sizes change nothing); low precision (bf16 stays
finite); gradients (float64 gradcheck on a tiny problem, when the aligner is differentiable);
`score_pairs` equal to the diagonal of the matrix; a prepared gallery (scores of image queries
against `prepare_gallery(text)`, reused call after call and in query chunks, equal to
`aligner(visual, text)` within 1e-6; `query_scores_prepared` likewise per direction); `explain`
(when implemented) returning one weight row per real word over the real regions. `gallery_dependent` aligners skip the checks
that assume a pair's score ignores the rest of the gallery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from finealign.tokens import TokenBatch

if TYPE_CHECKING:
    from finealign.aligners.base import Aligner

Factory = Callable[..., "Aligner[Any]"]


def _factory(aligner: str | Factory, dim: int) -> Factory:
    if not isinstance(aligner, str):
        return aligner
    import dataclasses

    from finealign.registry import ALIGNERS, config_class, create_aligner, ensure_builtins

    ensure_builtins("aligners")
    cfg = config_class(ALIGNERS.get(aligner))
    needs_dim = cfg is not None and "dim" in {f.name for f in dataclasses.fields(cfg)}
    return lambda **kw: create_aligner(aligner, **({"dim": dim} if needs_dim else {}), **kw)


def _batch(n: int, length: int, dim: int, g: torch.Generator, dtype=torch.float32) -> TokenBatch:
    mask = torch.rand(n, length, generator=g) < 0.7
    mask[torch.arange(n), torch.randint(0, length, (n,), generator=g)] = True
    tokens = torch.randn(n, length, dim, generator=g)
    return TokenBatch(tokens.to(dtype), mask, tokens.mean(1).to(dtype))


def _score(aligner: torch.nn.Module, visual: TokenBatch, text: TokenBatch) -> torch.Tensor:
    with torch.no_grad():
        return aligner(visual, text)


def check_aligner(
    aligner: str | Factory, *, dim: int = 8, seed: int = 0, options: dict[str, Any] | None = None
) -> None:
    """Run every contract check on `aligner` (a registered name or a factory of options)."""
    make = _factory(aligner, dim)
    options = dict(options or {})
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = make(**options).eval()
    name = getattr(aligner, "__name__", aligner) if not isinstance(aligner, str) else aligner
    visual, text = _batch(5, 6, dim, g), _batch(7, 4, dim, g)

    scores = _score(model, visual, text)
    assert scores.shape == (5, 7), f"{name}: scores must be (Nv, Nt) = (5, 7), got {tuple(scores.shape)}"
    assert scores.dtype == torch.float32, f"{name}: fp32 tokens must give fp32 scores, got {scores.dtype}"
    assert bool(torch.isfinite(scores).all()), f"{name}: non-finite scores on ordinary inputs"

    _check_prepared_gallery(model, name, visual, text, scores)

    noisy = [TokenBatch(torch.where(b.mask[..., None], b.tokens, 1e4 * torch.randn(b.tokens.shape, generator=g)),
                        b.mask, b.pooled) for b in (visual, text)]  # fmt: skip
    torch.testing.assert_close(_score(model, *noisy), scores, msg=f"{name}: padded token values changed scores")

    order_v, order_t = torch.randperm(6, generator=g), torch.randperm(4, generator=g)
    moved = (TokenBatch(visual.tokens[:, order_v], visual.mask[:, order_v], visual.pooled),
             TokenBatch(text.tokens[:, order_t], text.mask[:, order_t], text.pooled))  # fmt: skip
    torch.testing.assert_close(_score(model, *moved), scores, atol=1e-5, rtol=1e-5,
                               msg=f"{name}: moving padding to other positions changed scores")  # fmt: skip
    check_padding_invariance(model, name=str(name), dim=dim, seed=seed)

    if not getattr(model, "gallery_dependent", False):
        if hasattr(model.config, "chunk_visual"):
            torch.manual_seed(seed)
            small = make(**{**options, "chunk_visual": 2, "chunk_text": 3}).eval()
            small.load_state_dict(model.state_dict())
            torch.testing.assert_close(_score(small, visual, text), scores, atol=1e-5, rtol=1e-5,
                                       msg=f"{name}: chunk sizes changed scores")  # fmt: skip
        pairs = torch.tensor([[0, 0], [1, 3], [4, 6]])
        with torch.no_grad():
            paired = model.score_pairs(visual, text, pairs)
        torch.testing.assert_close(paired, scores[pairs[:, 0], pairs[:, 1]], atol=1e-5, rtol=1e-5,
                                   msg=f"{name}: score_pairs differs from the matrix")  # fmt: skip

    half = [TokenBatch(b.tokens.bfloat16(), b.mask, None if b.pooled is None else b.pooled.bfloat16())
            for b in (visual, text)]  # fmt: skip
    low = _score(model.to(torch.bfloat16), *half)
    model.float()
    assert bool(torch.isfinite(low).all()), f"{name}: bf16 scores are not finite"

    tiny_v, tiny_t = _batch(2, 3, dim, g, torch.float64), _batch(2, 2, dim, g, torch.float64)
    model64 = model.double().train()
    leaf = tiny_v.tokens.clone().requires_grad_(True)
    probe = model64(TokenBatch(leaf, tiny_v.mask, tiny_v.pooled), tiny_t)
    if probe.requires_grad:
        fn = lambda t: model64(TokenBatch(t, tiny_v.mask, tiny_v.pooled), tiny_t)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (leaf,), atol=1e-5), f"{name}: gradients disagree with finite differences"
    model.float().eval()

    try:
        alignment = model.explain(visual[:1], text[:1])
    except NotImplementedError:
        return
    words, regions = int(text.mask[0].sum()), int(visual.mask[0].sum())
    assert tuple(alignment.weights.shape) == (words, regions), (
        f"{name}: explain weights must be (real words, real regions) = {(words, regions)}, "
        f"got {tuple(alignment.weights.shape)}"
    )


def _check_prepared_gallery(model: Any, name: Any, visual: TokenBatch, text: TokenBatch, scores: torch.Tensor) -> None:
    """Scoring against a gallery prepared once equals scoring with the captions (1e-6), also when
    the gallery is reused by several calls of query chunks and per query direction."""
    with torch.no_grad():
        gallery = model.prepare_gallery(text)
        if getattr(model, "gallery_dependent", False):
            for queries in ("i2t", "t2i"):
                torch.testing.assert_close(model.query_scores_prepared(visual, gallery, queries),
                                           model.query_scores(visual, text, queries), atol=1e-6, rtol=0.0,
                                           msg=f"{name}: {queries} scores against a prepared gallery differ from "
                                               "query_scores(visual, text)")  # fmt: skip
            return
        # Query chunks first: the gallery must come out of them unchanged for the whole call after.
        chunks = torch.cat([model.score_prepared(visual[:2], gallery), model.score_prepared(visual[2:], gallery)])
        whole = model.score_prepared(visual, gallery)
    torch.testing.assert_close(whole, scores, atol=1e-6, rtol=0.0,
                               msg=f"{name}: scores against a prepared gallery differ from aligner(visual, text)")  # fmt: skip
    torch.testing.assert_close(chunks, scores, atol=1e-5, rtol=1e-5,
                               msg=f"{name}: query chunks against one prepared gallery differ from the whole matrix")  # fmt: skip


def _item(real: int, dim: int, g: torch.Generator) -> TokenBatch:
    """One item of `real` real tokens and no padding, with its masked-mean pooled vector."""
    tokens = torch.randn(1, real, dim, generator=g)
    return TokenBatch(tokens, torch.ones(1, real, dtype=torch.bool), tokens.mean(1))


def _stack(items: list[TokenBatch], length: int, g: torch.Generator) -> TokenBatch:
    """`items` in one batch, each padded (noise that the mask marks as padding) to `length` slots."""
    tokens, masks = [], []
    for item in items:
        pad = length - item.tokens.shape[1]
        tokens.append(torch.cat([item.tokens, torch.randn(1, pad, item.dim, generator=g)], 1))
        masks.append(torch.cat([item.mask, torch.zeros(1, pad, dtype=torch.bool)], 1))
    pooled = [item.pooled for item in items]
    return TokenBatch(torch.cat(tokens), torch.cat(masks), None if None in pooled else torch.cat(pooled))  # type: ignore[arg-type]


def check_padding_invariance(
    model: Aligner[Any], *, name: str, dim: int = 8, seed: int = 0, atol: float = 1e-5, rtol: float = 1e-5
) -> None:
    """Score one fixed (image, caption) pair in deterministic layouts and require one score.

    Layouts: alone (no padding at all); beside a longer item (so the pair is padded); beside a
    shorter item; beside both; alone with extra padding slots. Each is scored through the matrix
    (`forward`) and through `score_pairs`. A mean, softmax or count over every slot, padding
    included, changes the score between layouts even when the padded values are zero, which a
    random mask may miss. A `gallery_dependent` aligner's score may depend on the other items, so
    it is checked only with extra padding slots (the same gallery, wider). Raises AssertionError
    saying "padding" and naming the layout.
    """
    g = torch.Generator().manual_seed(seed + 1)
    v, t = _item(3, dim, g), _item(2, dim, g)
    v_long, t_long = _item(5, dim, g), _item(6, dim, g)
    v_short, t_short = _item(1, dim, g), _item(1, dim, g)
    with torch.no_grad():
        alone = float(model(v, t)[0, 0])
    extra = {"with extra padding slots": (_stack([v], 7, g), _stack([t], 6, g), 0, 0)}
    layouts: dict[str, tuple[TokenBatch, TokenBatch, int, int]] = {}
    if not getattr(model, "gallery_dependent", False):
        layouts = {
            "beside a longer item": (_stack([v, v_long], 5, g), _stack([t_long, t], 6, g), 0, 1),
            "beside a shorter item": (_stack([v_short, v], 3, g), _stack([t, t_short], 2, g), 1, 0),
            "beside longer and shorter items": (
                _stack([v_long, v, v_short], 8, g), _stack([t_short, t_long, t], 9, g), 1, 2),
        }  # fmt: skip
    layouts |= extra
    for layout, (visual, text, i, j) in layouts.items():
        pairs = torch.tensor([[i, j]])
        with torch.no_grad():
            got = {"the matrix": float(model(visual, text)[i, j]),
                   "score_pairs": float(model.score_pairs(visual, text, pairs)[0])}  # fmt: skip
        for route, score in got.items():
            if not abs(score - alone) <= atol + rtol * abs(alone):
                raise AssertionError(
                    f"{name}: padding changed the score of one pair {layout} ({route}): {score:.6g}, "
                    f"scored alone without padding {alone:.6g}. Padded positions must not count "
                    "(a mean, softmax or count over every slot? divide by the real tokens, mask before max/softmax)"
                )
