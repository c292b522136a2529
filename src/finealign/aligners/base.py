"""The aligner contract.

Every aligner maps visual tokens (Nv, Lv, d) + mask and text tokens (Nt, Lt, d) + mask (plus
optional pooled global vectors) to an (Nv, Nt) similarity matrix, and where the method has one,
explains a single pair as a token-level alignment (which word goes to which region, with weight).

Memory: `Aligner.forward` scores blocks of `chunk_visual × chunk_text` items at a time, so the
largest temporary is (chunk_visual, chunk_text, Lv, Lt) and never (Nv, Nt, Lv, Lt).
A new aligner subclasses `Aligner[ItsConfig]`, sets `Config = ItsConfig` (a dataclass deriving
from AlignerConfig), defines `score_block`, and registers itself with `@ALIGNERS.register("name")`.
The type parameter is what lets a type checker see `self.config.<field>` of the aligner's own Config.

Retrieval is directional. An image query ranks captions, a caption query ranks images. For most
aligners a pair's score is a function of that pair alone, so one matrix serves both directions.
An aligner whose score for a pair depends on the rest of the gallery (a shortlist, an approximate
search) declares `gallery_dependent = True` and implements `query_scores(visual, text, queries)`:
the matrix as the queries of ONE direction see it. The engine then scores each direction (and
each sub-gallery, such as a COCO 1K fold) separately, so no query is credited with a candidate
that only another query's shortlist held.

A prepared gallery. Much of scoring depends on the captions alone: normalising them, sorting them
by length into blocks, packing their real words, text-side weights, global vectors. A retrieval
system does that once per gallery, like building an index, and then scores every image query
against it: `gallery = aligner.prepare_gallery(text)` once, then `aligner.score_prepared(visual,
gallery)` per batch of image queries (`query_scores_prepared` per query direction for
gallery-dependent aligners). `aligner(visual, text)` prepares on the fly and gives the same scores.
An aligner keeps what it needs per block by overriding `prepare_block` / `score_prepared_block`
(or `build_gallery` / `score_against` for the whole gallery). A plugin that defines its own
`forward` and none of these gets a gallery that stores the captions and scores by `forward`: the
same scores, without the saving.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, cast

import torch
from torch import Tensor, nn

from finealign.aligners.validation import check_batch, check_pair, check_queries
from finealign.checks import check_positive_int
from finealign.errors import ConfigError, ShapeError
from finealign.kernels.checks import check_pair_indices
from finealign.kernels.normalize import l2_normalize
from finealign.tokens import TokenBatch

#: The two query directions of retrieval: image queries rank captions, caption queries rank images.
QUERY_DIRECTIONS = ("i2t", "t2i")


def check_query_direction(queries: str) -> None:
    """Raise ConfigError unless `queries` names one query direction."""
    if queries not in QUERY_DIRECTIONS:
        raise ConfigError(f"queries must be one of {QUERY_DIRECTIONS}, got {queries!r}")


@dataclass
class AlignerConfig:
    """Options every token-level aligner shares."""

    normalize: bool = True  # L2-normalise tokens first, so token similarities are cosines
    chunk_visual: int = 64  # items per block along Nv
    chunk_text: int = 256  # items per block along Nt
    chunk_pairs: int = 32  # pairs per block in `score_pairs` (the generic path costs chunk² pairs)

    def __post_init__(self) -> None:
        # A string such as "no" or "false" is truthy: accepting it would silently normalise.
        if not isinstance(self.normalize, bool):
            raise ConfigError(f"normalize must be true or false, got {self.normalize!r}")
        for key in ("chunk_visual", "chunk_text", "chunk_pairs"):
            value = getattr(self, key)
            check_positive_int(key, value)


@dataclass
class TokenAlignment:
    """How one (image, caption) pair was aligned, for interpretation and plots.

    weights: (Lt, Lv) alignment weight of each real word to each real region (flow, attention,
             or one-hot for hard alignment); padded tokens are removed.
    word_to_region: (Lt,) index of the region each word relies on most.
    score: the pair's similarity, equal to the aligner's matrix entry.
    """

    weights: Tensor
    word_to_region: Tensor
    score: float


@dataclass(frozen=True, eq=False)
class PreparedGallery:
    """A caption gallery prepared once for many image queries (`Aligner.prepare_gallery`).

    captions: the captions as given, (N, L, d) — what an aligner that only stores its inputs
              scores from.
    prepared_by: which aligner object prepared it; only that one can score against it.
    text: the prepared captions (padding zeroed, normalised when the config asks) in the given
          order; None when the aligner only stores its inputs (scores come from its `forward`).
    order / restore: the captions' stable ascending-length order and its inverse permutation.
    blocks: one entry per `chunk_text` captions of that order — the block's prepared TokenBatch
            cut to its used token positions, or the aligner's own record of it (`prepare_block`).
    extras: whole-gallery values an aligner keeps (global vectors, an index, ...).

    It holds tensors computed with the aligner's parameters at preparation time: prepare again
    after training changes them.
    """

    captions: TokenBatch
    prepared_by: str
    text: TokenBatch | None = None
    order: Tensor | None = None
    restore: Tensor | None = None
    blocks: tuple[Any, ...] = ()
    extras: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.captions)


@dataclass(frozen=True, eq=False)
class PackedBlock:
    """A block of prepared captions with their real words packed caption after caption.

    batch: the block (N, L, d); words: (R, d) its real words; owner: (R,) each word's caption in
    the block; counts: (N,) real words per caption."""

    batch: TokenBatch
    words: Tensor
    owner: Tensor
    counts: Tensor

    @classmethod
    def of(cls, batch: TokenBatch) -> PackedBlock:
        real = batch.mask
        return cls(batch, batch.tokens[real], real.nonzero()[:, 0], real.sum(1))

    def __len__(self) -> int:
        return len(self.batch)


def gallery_key(aligner: Any) -> str:
    """The `prepared_by` of a gallery that `aligner` prepares: its class and identity."""
    return f"{type(aligner).__name__}@{id(aligner):x}"


#: The Config dataclass of an aligner (AlignerConfig or a subclass).
C = TypeVar("C", bound=AlignerConfig)


class Aligner(nn.Module, Generic[C]):
    """Base class. Subclasses set `Config` and implement `score_block`."""

    #: The dataclass the registry builds from keyword arguments; a subclass sets its own (its `C`).
    Config: ClassVar[type[AlignerConfig]] = AlignerConfig
    config: C
    #: True if the aligner needs `pooled` global vectors on both sides.
    needs_pooled: bool = False
    #: True if a pair's score depends on the rest of the gallery (see the module docstring); the
    #: aligner then overrides `query_scores`, and rows of its matrix cannot be scored in chunks.
    gallery_dependent: ClassVar[bool] = False

    def __init__(self, config: C | None = None):
        super().__init__()
        # cast: a subclass's `Config` is its `C` (a class attribute cannot be typed by a TypeVar).
        self.config = config if config is not None else cast(C, self.Config())
        # Built in inference mode: an aligner used on its own scores as at test time; the engine
        # switches it to train mode while training (only two_stage behaves differently then).
        self.eval()

    # -- the contract -------------------------------------------------------------------------
    def forward(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        """(Nv, Nt) similarity matrix, computed in bounded chunks: the captions prepared on the fly
        (`build_gallery`), then scored like a prepared gallery (`score_against`)."""
        check_pair(visual, text, need_pooled=self.needs_pooled)
        return self.score_against(visual, self.build_gallery(text))

    def prepare_gallery(self, text: TokenBatch) -> PreparedGallery:
        """The caption gallery `text` prepared once for scoring many image queries (module docstring).

        `score_prepared(visual, prepare_gallery(text))` equals `self(visual, text)`."""
        check_batch(text, "text", need_pooled=self.needs_pooled)
        if self._overrides("forward") and not (self._overrides("build_gallery") or self._overrides("score_against")):
            # A plugin's own forward: store the inputs, score by forward (same scores, no saving).
            return PreparedGallery(captions=text, prepared_by=gallery_key(self))
        return self.build_gallery(text)

    def score_prepared(self, visual: TokenBatch, gallery: PreparedGallery) -> Tensor:
        """(Nv, Nt) scores of image queries `visual` against a gallery from `prepare_gallery`."""
        self.check_gallery(visual, gallery)
        if gallery.text is None:  # stored inputs (see prepare_gallery)
            return self(visual, gallery.captions)
        return self.score_against(visual, gallery)

    def query_scores_prepared(self, visual: TokenBatch, gallery: PreparedGallery, queries: str) -> Tensor:
        """`query_scores` against a prepared caption gallery (the same matrix)."""
        check_query_direction(queries)
        if self._overrides("query_scores") and not self._overrides("query_scores_prepared"):
            self.check_gallery(visual, gallery)  # a plugin's own query_scores: called on the captions
            return self.query_scores(visual, gallery.captions, queries)
        return self.score_prepared(visual, gallery)

    def check_gallery(self, visual: TokenBatch, gallery: PreparedGallery) -> None:
        """ConfigError / ShapeError unless `gallery` was prepared by this aligner and `visual` can
        be scored against it."""
        if not isinstance(gallery, PreparedGallery):
            raise ConfigError(
                f"expected a PreparedGallery from this aligner's prepare_gallery(text), got {type(gallery).__name__}"
            )
        if gallery.prepared_by != gallery_key(self):
            raise ConfigError(
                f"this gallery was prepared by {gallery.prepared_by}, not by this aligner "
                f"({gallery_key(self)}): prepare it with the aligner that scores it"
            )
        check_queries(visual, gallery.captions, need_pooled=self.needs_pooled)

    def build_gallery(self, text: TokenBatch) -> PreparedGallery:
        """`prepare_gallery` on checked captions: prepared, sorted by length, cut into blocks of
        `chunk_text` captions of similar length, each cut to the token positions any of its items
        uses (the padding that would be multiplied shrinks; padding is exact, so no score
        changes), and each block kept as `prepare_block` makes it."""
        prepared = self.prepare(text)
        order = prepared.mask.sum(1).argsort(stable=True)
        ordered = prepared[order]
        ct = self.config.chunk_text
        blocks = tuple(self.prepare_block(without_padding(ordered[j : j + ct])) for j in range(0, len(ordered), ct))
        return PreparedGallery(captions=text, prepared_by=gallery_key(self), text=prepared, order=order,
                               restore=order.argsort(), blocks=blocks)  # fmt: skip

    def score_against(self, visual: TokenBatch, gallery: PreparedGallery) -> Tensor:
        """`score_prepared` on checked queries: the fused kernel when it applies, else blocks of
        `chunk_visual` images × each prepared caption block, columns put back in caption order."""
        assert gallery.text is not None and gallery.restore is not None  # build_gallery fills them
        visual = self.prepare(visual)
        fused = self.fused_scores(visual, gallery.text)
        if fused is not None:
            return fused
        cv = self.config.chunk_visual
        rows = []
        for i in range(0, len(visual), cv):
            vb = without_padding(visual[i : i + cv])
            rows.append(torch.cat([self.score_prepared_block(vb, block) for block in gallery.blocks], 1))
        return torch.cat(rows, 0)[:, gallery.restore]

    def prepare_block(self, block: TokenBatch) -> Any:
        """What `score_prepared_block` needs of one block of prepared, length-sorted captions:
        by default the block itself. An aligner keeps here what it would otherwise redo per call."""
        return block

    def score_prepared_block(self, visual: TokenBatch, block: Any) -> Tensor:
        """(nv, nt) scores of prepared visual items against one prepared caption block."""
        return self.score_block(visual, block)

    def score_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        """(nv, nt) scores for one block of already-prepared items."""
        raise NotImplementedError

    def _overrides(self, name: str) -> bool:
        """Whether this aligner's class replaces `Aligner.<name>`."""
        return getattr(type(self), name) is not getattr(Aligner, name)

    def query_scores(self, visual: TokenBatch, text: TokenBatch, queries: str) -> Tensor:
        """(Nv, Nt) scores as the queries of one direction rank them.

        queries "i2t": row i holds what image query i ranks the captions by; "t2i": column j holds
        what caption query j ranks the images by. Only those rows / columns are meaningful. A
        gallery-independent aligner gives its one matrix for both.
        """
        check_query_direction(queries)
        return self(visual, text)

    def fused_scores(self, visual: TokenBatch, text: TokenBatch) -> Tensor | None:
        """The whole (Nv, Nt) matrix from a fused kernel (finealign.kernels), or None to score in
        chunks. Fused kernels keep token pairs on chip, so they need no chunking."""
        return None

    def fused_pair_scores(self, visual: TokenBatch, text: TokenBatch, pairs: Tensor) -> Tensor | None:
        """`score_pairs` from a fused kernel, or None to score the pairs in chunks."""
        return None

    def score_pairs(self, visual: TokenBatch, text: TokenBatch, pairs: Tensor | None = None) -> Tensor:
        """(P,) scores of chosen (visual item, text item) pairs, without the full matrix.

        pairs: (P, 2) integer tensor of (visual index, text index) rows; None pairs item p of
        `visual` with item p of `text` (both must then hold P items). Entry p equals
        `self(visual, text)[pairs[p, 0], pairs[p, 1]]`. Used by `two_stage` to re-rank a shortlist.
        """
        check_pair(visual, text, need_pooled=self.needs_pooled)
        pairs = resolve_pairs(visual, text, pairs)
        return self.score_prepared_pairs(self.prepare(visual), self.prepare(text), pairs)

    def score_prepared_pairs(self, visual: TokenBatch, text: TokenBatch, pairs: Tensor) -> Tensor:
        """`score_pairs` of already-prepared (`prepare`) items at checked (P, 2) `pairs`."""
        fused = self.fused_pair_scores(visual, text, pairs)
        if fused is not None:
            return fused
        step = self.config.chunk_pairs
        scores = [
            self.score_pair_block(visual[pairs[i : i + step, 0]], text[pairs[i : i + step, 1]])
            for i in range(0, len(pairs), step)
        ]
        if not scores:  # no pairs: an empty result of the dtype the matrix would have
            return visual.tokens.new_zeros(0)
        return torch.cat(scores)

    def score_pair_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        """(c,) scores of item p with item p for one chunk of already-prepared pairs.

        Generic and correct for every aligner: the diagonal of the c × c block (c² work).
        Aligners with a direct paired form override this for speed.
        """
        return self.score_block(visual, text).diagonal()

    def explain(self, visual: TokenBatch, text: TokenBatch) -> TokenAlignment:
        """Token-level alignment of one pair (visual and text of one item each)."""
        raise NotImplementedError(f"{type(self).__name__} has no token-level alignment")

    def reset_diagnostics(self) -> None:
        """Forget what `diagnostics` has recorded (the engine calls it before scoring a gallery)."""

    def diagnostics(self) -> dict[str, float]:
        """What an iterative aligner reached while scoring since the last reset, e.g. tokenflow's
        {"marginal_error", "iterations", "converged"}; the engine stores it with the metrics
        (prefixed `aligner_`). Empty for aligners with nothing to report."""
        return {}

    # -- helpers ------------------------------------------------------------------------------
    def prepare(self, batch: TokenBatch) -> TokenBatch:
        """Zero padded tokens, then normalise tokens (and pooled vectors) when the config asks
        for cosine similarity."""
        # Validation only checks real tokens, so padding may hold NaN/inf. Masking scores later is
        # not enough: in backward, einsum multiplies a zero gradient by the padded token (0 * NaN).
        tokens = batch.tokens.masked_fill(~batch.mask.unsqueeze(-1), 0.0)
        pooled = batch.pooled
        if self.config.normalize:
            tokens = l2_normalize(tokens)  # scale- and fp16-safe (kernels/normalize.py)
            pooled = None if pooled is None else l2_normalize(pooled)
        return TokenBatch(tokens, batch.mask, pooled)

    def prepare_pair(self, visual: TokenBatch, text: TokenBatch) -> tuple[TokenBatch, TokenBatch]:
        """Validate and prepare a single pair for `explain`."""
        check_pair(visual, text, need_pooled=self.needs_pooled)
        if len(visual) != 1 or len(text) != 1:
            raise ConfigError(f"explain() takes one visual and one text item, got {len(visual)} and {len(text)}")
        return self.prepare(visual), self.prepare(text)


def prepare_gallery(aligner: Any, text: TokenBatch) -> Any:
    """`aligner.prepare_gallery(text)`, or the captions themselves for an aligner without one
    (any callable module the engine is given)."""
    prepare = getattr(aligner, "prepare_gallery", None)
    return text if prepare is None else prepare(text)


def score_queries(aligner: Any, visual: TokenBatch, gallery: Any, queries: str = "i2t") -> Tensor:
    """(Nv, Nt) scores of image queries against a gallery from `prepare_gallery`, as the queries
    of one direction rank them (gallery-dependent aligners; one matrix for the others)."""
    if isinstance(gallery, TokenBatch):  # an aligner without prepare_gallery
        if getattr(aligner, "gallery_dependent", False):
            return aligner.query_scores(visual, gallery, queries)
        return aligner(visual, gallery)
    if getattr(aligner, "gallery_dependent", False):
        return aligner.query_scores_prepared(visual, gallery, queries)
    return aligner.score_prepared(visual, gallery)


def packed_word_best(visual: TokenBatch, text: TokenBatch) -> tuple[Tensor, Tensor]:
    """(best (Nv, R), owner (R,)): every real word of `text` packed caption after caption (R real
    words, owner[r] = its caption) with its best similarity over each image's real regions. One
    product of every region with every *real* word: no padded word position is multiplied."""
    block = PackedBlock.of(text)
    return word_best(visual, block.words), block.owner


#: Similarities per tile of `word_best` (256 KiB in fp32): a tile's product is reduced while it is
#: still in the core's cache. benchmarks/scoring_cost_cpu.py (one CPU thread, 2,500 captions):
#: mean_max 0.86/1.06/0.89× the real-token floor at 1/8/64 queries, 0.96/1.27/1.11× in one product
#: (benchmarks/results/scoring-cost-2026-12-03; the floor writes its whole product out).
WORD_TILE = 2**16


def word_best(visual: TokenBatch, words: Tensor) -> Tensor:
    """(Nv, R) each of the packed `words` (R, d)'s best similarity over each image's real regions.

    Scoring on the CPU, the product is taken in tiles of words (`WORD_TILE` similarities, at least
    64 words), each reduced over the regions at once while in cache, so the (Nv, Lv, R) product is
    never held whole. With gradients (training: the tiles' backward cost ~9 % more per step) or on
    an accelerator (many small products cost launches there) it is one product."""
    nv, lv, dim = visual.tokens.shape
    regions = visual.tokens.reshape(nv * lv, dim)
    padded = None if bool(visual.mask.all()) else ~visual.mask[:, :, None]  # grid tokens: all real
    grad = torch.is_grad_enabled() and (regions.requires_grad or words.requires_grad)
    tiled = regions.device.type == "cpu" and not grad
    tile = max(64, WORD_TILE // max(nv * lv, 1)) if tiled else max(len(words), 1)
    best = []
    for start in range(0, len(words), tile):
        sim = (regions @ words[start : start + tile].T).reshape(nv, lv, -1)
        if padded is not None:
            sim = sim.masked_fill(padded, float("-inf"))
        best.append(sim.amax(dim=1))
    if not best:  # no words: an empty (Nv, 0) result
        return regions.new_zeros(nv, 0)
    return best[0] if len(best) == 1 else torch.cat(best, 1)


def best_region_alignment(
    aligner: Any, visual: TokenBatch, text: TokenBatch, word_weight: Tensor | float
) -> TokenAlignment:
    """The alignment of token-wise max aligners (mean-max, hard, weighted mean-max): each real word
    keeps its most similar real region, with weight `word_weight` (a scalar, or one per real word);
    `visual`/`text` are one prepared item each. The score is the aligner's own for the pair."""
    v = visual.tokens[0][visual.mask[0]]
    t = text.tokens[0][text.mask[0]]
    best = (t @ v.T).argmax(dim=1)  # (real words,)
    weights = v.new_zeros(len(t), len(v))
    weight = word_weight.to(weights.dtype).detach() if isinstance(word_weight, Tensor) else word_weight
    weights[range(len(best)), best] = weight
    score = aligner.score_block(visual, text)[0, 0]
    return TokenAlignment(weights=weights, word_to_region=best, score=float(score.detach()))


def without_padding(batch: TokenBatch) -> TokenBatch:
    """The batch cut to the token positions that at least one of its items uses."""
    used = batch.mask.any(0)
    if bool(used.all()):
        return batch
    return TokenBatch(batch.tokens[:, used], batch.mask[:, used], batch.pooled)


def resolve_pairs(visual: TokenBatch, text: TokenBatch, pairs: Tensor | None) -> Tensor:
    """The checked (P, 2) index pairs of `score_pairs`, on the tokens' device (None → item p with item p)."""
    if pairs is None:
        if len(visual) != len(text):
            raise ShapeError(
                f"score_pairs pairs item p with item p, so visual and text need equal lengths; "
                f"got {len(visual)} and {len(text)} (pass `pairs` to choose other pairs)"
            )
        pairs = torch.arange(len(visual), device=visual.tokens.device).unsqueeze(1).expand(-1, 2)
    check_pair_indices(pairs, len(visual), len(text))
    return pairs.to(visual.tokens.device)


def global_vectors(batch: TokenBatch) -> Tensor:
    """(N, d) `pooled`, or the masked token mean when it is None (NaN/inf padding cannot leak in)."""
    return batch.pooled if batch.pooled is not None else batch.mean_pooled()


def token_similarities(visual: TokenBatch, text: TokenBatch) -> Tensor:
    """(nv, nt, Lv, Lt) token-pair similarities of one block, in the input dtype (the matmul
    backends accumulate half-precision products in fp32 internally)."""
    sim = torch.einsum("ikd,jld->ijkl", visual.tokens, text.tokens)
    return sim


def masked_fill_pairs(sim: Tensor, visual_mask: Tensor, text_mask: Tensor, value: float) -> Tensor:
    """Set entries of a (nv, nt, Lv, Lt) block whose visual or text token is padding to `value`."""
    valid = visual_mask[:, None, :, None] & text_mask[None, :, None, :]
    return sim.masked_fill(~valid, value)


def paired_token_similarities(visual: TokenBatch, text: TokenBatch, padding_value: float) -> Tensor:
    """(c, Lv, Lt) token similarities of item p with item p; pairs with a padded token get
    `padding_value`. The paired counterpart of token_similarities + masked_fill_pairs."""
    sim = torch.einsum("pkd,pld->pkl", visual.tokens, text.tokens)
    valid = visual.mask[:, :, None] & text.mask[:, None, :]
    return sim.masked_fill(~valid, padding_value)


def masked_mean(values: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of `values` over `dim` counting only entries where `mask` (broadcastable) is True."""
    # where() rather than multiply: padded entries may hold -inf, and -inf * 0 is NaN.
    mask = mask.expand_as(values)
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(dim)
    return total / mask.sum(dim).clamp_min(1).to(values.dtype)
