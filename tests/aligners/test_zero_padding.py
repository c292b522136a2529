"""DRL's fixed-length zero padding (`zero_pad_text` / `zero_pad_visual`) and weighted_mean_max's
`weight_input: raw`, against per-pair loops on random inputs with padding at random positions.

Lengths are chosen so that both sides hold items with padded slots (fewer real tokens than the
fixed length) and items without, and the floor at 0 decides many maxima (the check at the end of
each case), so a wrong floor cannot pass."""

from __future__ import annotations

import pytest
import torch

from finealign.errors import ConfigError
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch
from tests.aligners.reference import (
    pairwise,
    real_tokens,
    zero_padded_mean_max_pair,
    zero_padded_weighted_pair,
)
from tests.conftest import random_batch

PAD_VISUAL, PAD_TEXT = 5, 4  # fixed lengths inside the random batches' [2, 6] and [2, 5] ranges


def batches(gen, dtype=torch.float64):
    v = random_batch(7, 6, 8, generator=gen, dtype=dtype, min_len=2)
    t = random_batch(9, 5, 8, generator=gen, dtype=dtype, min_len=2)
    for batch, pad in ((v, PAD_VISUAL), (t, PAD_TEXT)):
        real = batch.mask.sum(1)
        assert bool((real < pad).any()) and bool((real >= pad).any()), "want padded and unpadded items"
    return v, t


def assert_the_floor_matters(v, t, got, direction="both"):
    """The same case under exact masking must differ: otherwise the test could not see the floor."""
    exact = create_aligner("mean_max", direction=direction, backend="torch")(v, t).double()
    assert float((got.double() - exact).abs().max()) > 1e-3


@pytest.mark.parametrize("chunks", [(64, 256), (3, 2)])
def test_mean_max_both_directions_with_zero_padding_matches_loop(chunks, gen):
    v, t = batches(gen)
    aligner = create_aligner(
        "mean_max", direction="both", zero_pad_visual=PAD_VISUAL, zero_pad_text=PAD_TEXT,
        chunk_visual=chunks[0], chunk_text=chunks[1],
    )  # fmt: skip
    ref = pairwise(v, t, lambda i, j: zero_padded_mean_max_pair(
        real_tokens(v, i), real_tokens(t, j), "both", PAD_VISUAL, PAD_TEXT))  # fmt: skip
    got = aligner(v, t)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    pairs = torch.tensor([[0, 0], [6, 8], [3, 1], [2, 7]])
    torch.testing.assert_close(aligner.score_pairs(v, t, pairs), ref[pairs[:, 0], pairs[:, 1]], atol=1e-12, rtol=0)
    assert_the_floor_matters(v, t, got)


@pytest.mark.parametrize("word_pooling", ["mean", "sum"])
def test_mean_max_text_direction_with_zero_padded_regions_matches_loop(word_pooling, gen):
    # direction "text" scores through the packed-words path; the visual floor applies there too.
    v, t = batches(gen)
    aligner = create_aligner("mean_max", zero_pad_visual=PAD_VISUAL, word_pooling=word_pooling)
    ref = pairwise(v, t, lambda i, j: zero_padded_mean_max_pair(
        real_tokens(v, i), real_tokens(t, j), "text", PAD_VISUAL, None, word_pooling))  # fmt: skip
    got = aligner(v, t)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    if word_pooling == "mean":
        assert_the_floor_matters(v, t, got, "text")
    pairs = torch.tensor([[1, 1], [5, 3]])
    torch.testing.assert_close(aligner.score_pairs(v, t, pairs), ref[pairs[:, 0], pairs[:, 1]], atol=1e-12, rtol=0)


def test_items_as_long_as_the_fixed_length_are_not_floored(gen):
    """DRL's padding is per item: with every item at least as long as the fixed length, nothing changes."""
    v, t = batches(gen)
    floored = create_aligner("mean_max", direction="both", zero_pad_visual=2, zero_pad_text=2)
    torch.testing.assert_close(floored(v, t), create_aligner("mean_max", direction="both")(v, t))


def test_mean_max_zero_padding_gradcheck(gen):
    v = random_batch(3, 4, 5, generator=gen, dtype=torch.float64, min_len=2)
    t = random_batch(2, 4, 5, generator=gen, dtype=torch.float64, min_len=2)
    aligner = create_aligner("mean_max", direction="both", zero_pad_visual=4, zero_pad_text=4, chunk_visual=2)

    def fn(vt, tt):
        return aligner(TokenBatch(vt, v.mask), TokenBatch(tt, t.mask))

    assert torch.autograd.gradcheck(fn, (v.tokens.clone().requires_grad_(True), t.tokens.clone().requires_grad_(True)))


def linear_weighted(direction, seed=0, **options):
    """weighted_mean_max with random (non-zero) linear heads, so the weights matter."""
    aligner = create_aligner("weighted_mean_max", dim=8, direction=direction, **options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in aligner.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return aligner.double()


def head(layer):
    return None if layer is None else (layer.weight[0].detach().double(), layer.bias[0].detach().double())


@pytest.mark.parametrize("direction", ["text", "visual", "both"])
@pytest.mark.parametrize("weight_input", ["prepared", "raw"])
def test_weighted_mean_max_zero_padding_and_raw_head_input_match_loop(direction, weight_input, gen):
    v, t = batches(gen)
    pads = {"zero_pad_visual": PAD_VISUAL if direction != "visual" else None,
            "zero_pad_text": PAD_TEXT if direction != "text" else None}  # fmt: skip
    aligner = linear_weighted(direction, weight_input=weight_input, chunk_visual=3, chunk_text=4, **pads)
    raw = weight_input == "raw"
    ref = pairwise(v, t, lambda i, j: zero_padded_weighted_pair(
        real_tokens(v, i), real_tokens(t, j),
        real_tokens(v, i, normalize=not raw), real_tokens(t, j, normalize=not raw),
        head(aligner.text_weight), head(aligner.visual_weight), direction,
        pads["zero_pad_visual"], pads["zero_pad_text"],
    ))  # fmt: skip
    got = aligner(v, t)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    pairs = torch.tensor([[0, 0], [6, 8], [3, 1]])
    torch.testing.assert_close(aligner.score_pairs(v, t, pairs), ref[pairs[:, 0], pairs[:, 1]], atol=1e-12, rtol=0)
    if raw:  # the raw head input is visible: the prepared one scores this case differently
        other = linear_weighted(direction, weight_input="prepared", **pads)
        assert float((other(v, t) - got).abs().max().detach()) > 1e-3


def test_raw_head_input_without_normalize_is_the_prepared_one(gen):
    v, t = batches(gen)
    raw = linear_weighted("both", weight_input="raw", normalize=False)
    prepared = linear_weighted("both", weight_input="prepared", normalize=False)
    torch.testing.assert_close(raw(v, t), prepared(v, t))


def test_raw_head_input_explain_and_gradients(gen):
    v, t = batches(gen)
    aligner = linear_weighted("both", weight_input="raw", zero_pad_visual=PAD_VISUAL, zero_pad_text=PAD_TEXT)
    expl = aligner.explain(v[1], t[2])
    with torch.no_grad():
        assert expl.score == pytest.approx(float(aligner(v, t)[1, 2]), abs=1e-12)
    ref_best = (real_tokens(t, 2) @ real_tokens(v, 1).T).argmax(1)  # by cosine, not by raw dot product
    assert torch.equal(expl.word_to_region, ref_best)
    aligner(v, t).diagonal().sum().backward()
    for name, p in aligner.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # Triton's CPU interpreter on padded tiles
@pytest.mark.parametrize("name", ["mean_max", "weighted_mean_max"])
def test_fused_kernel_runs_only_when_no_item_has_zero_slots(name, gen, monkeypatch):
    """The fused kernels mask padding exactly: items with DRL's zero slots take the torch path (and
    get the floored scores); when no item has one, the kernel scores as before."""
    v, t = batches(gen, torch.float32)
    options = {"direction": "both", "zero_pad_visual": PAD_VISUAL, "zero_pad_text": PAD_TEXT}
    if name == "weighted_mean_max":
        options.update(dim=8, weight_input="raw")
    fused, plain = create_aligner(name, backend="triton", **options), create_aligner(name, backend="torch", **options)
    plain.load_state_dict(fused.state_dict())
    calls = []
    original = fused.kernel_scores
    monkeypatch.setattr(fused, "kernel_scores", lambda *a: calls.append(1) or original(*a))
    with torch.no_grad():
        torch.testing.assert_close(fused(v, t), plain(v, t))
        assert not calls
        short = {"zero_pad_visual": 1, "zero_pad_text": 1}  # every item is at least this long
        fused.config.zero_pad_visual = plain.config.zero_pad_visual = short["zero_pad_visual"]
        fused.config.zero_pad_text = plain.config.zero_pad_text = short["zero_pad_text"]
        torch.testing.assert_close(fused(v, t), plain(v, t), atol=1e-5, rtol=1e-5)
        assert calls


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("mean_max", {"zero_pad_text": 32}, "zero_pad_text floors each region's best word"),
        ("mean_max", {"direction": "both", "zero_pad_visual": 0}, "zero_pad_visual"),
        ("mean_max", {"direction": "both", "zero_pad_text": 2.5}, "zero_pad_text"),
        ("weighted_mean_max", {"dim": 4, "direction": "visual", "zero_pad_visual": 12}, "zero_pad_visual floors"),
        ("weighted_mean_max", {"dim": 4, "direction": "text", "zero_pad_text": 12}, "zero_pad_text floors"),
        ("weighted_mean_max", {"dim": 4, "weight_input": "unit"}, "weight_input must be 'prepared' or 'raw'"),
    ],
)
def test_bad_zero_padding_and_weight_input_options_are_config_errors(name, options, match):
    with pytest.raises(ConfigError, match=match):
        create_aligner(name, **options)
