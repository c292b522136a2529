"""Global alignment: one vector per item, no token interaction (the CLIP-style baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from finealign.aligners.base import Aligner, AlignerConfig, PreparedGallery, gallery_key
from finealign.aligners.pooling import accumulation_dtype
from finealign.errors import ConfigError
from finealign.kernels.normalize import l2_normalize
from finealign.registry import ALIGNERS
from finealign.tokens import TokenBatch

SOURCES = ("auto", "pooled", "mean")


@dataclass
class GlobalConfig(AlignerConfig):
    # Where each item's global vector comes from:
    #   "auto":   `pooled` when the batch has it (CLS / pooler output), else the masked token mean;
    #   "pooled": always `pooled`; a batch without it is a ShapeError;
    #   "mean":   always the masked mean of the real tokens, ignoring `pooled`.
    # The mean is taken over the raw tokens, before `normalize` is applied to the result.
    source: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in SOURCES:
            raise ConfigError(f"source must be one of {SOURCES}, got {self.source!r}")


@ALIGNERS.register("global")
class GlobalAligner(Aligner[GlobalConfig]):
    """Cosine of pooled global vectors (CLIP style); masked token mean when `pooled` is missing."""

    Config = GlobalConfig

    def __init__(self, config: GlobalConfig | None = None):
        super().__init__(config)
        self.needs_pooled = self.config.source == "pooled"

    def build_gallery(self, text: TokenBatch) -> PreparedGallery:
        # The gallery is its captions' normalised global vectors, made once.
        return PreparedGallery(captions=text, prepared_by=gallery_key(self), text=self.prepare(text))

    def score_against(self, visual: TokenBatch, gallery: PreparedGallery) -> Tensor:
        # One (Nv, d) x (d, Nt) matmul: no (Lv, Lt) temporaries, so no chunking.
        assert gallery.text is not None  # build_gallery fills it
        return self.score_block(self.prepare(visual), gallery.text)

    def score_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        assert visual.pooled is not None and text.pooled is not None  # prepare() fills them
        return visual.pooled @ text.pooled.T

    def score_pair_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        assert visual.pooled is not None and text.pooled is not None  # prepare() fills them
        acc = accumulation_dtype(visual.pooled.dtype)  # a d-long sum: fp32 for half inputs, like matmul
        return (visual.pooled.to(acc) * text.pooled.to(acc)).sum(-1).to(visual.pooled.dtype)

    def prepare(self, batch: TokenBatch) -> TokenBatch:
        """Fill `pooled` as `source` says, then normalise it (tokens are left as they are)."""
        pooled = batch.pooled
        if self.config.source == "mean" or pooled is None:
            # mean_pooled selects real tokens with where(), so NaN in padding cannot leak in.
            pooled = batch.mean_pooled()
        pooled = l2_normalize(pooled) if self.config.normalize else pooled
        return TokenBatch(batch.tokens, batch.mask, pooled)

    def explain(self, visual: TokenBatch, text: TokenBatch):
        raise NotImplementedError(
            "the 'global' aligner compares one vector per item, so it has no word-to-region "
            "alignment to explain; use a token-level aligner (mean_max, hard, cross_attention, ...)"
        )
