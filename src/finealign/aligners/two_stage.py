"""Two-stage retrieval (TGDT inference): a global shortlist, re-ranked by a mixed global/local score.

Stage 1: global cosine similarity G (pooled vectors, or the masked token mean when an encoder
gives none) shortlists the top-K candidates of every query — per image for `i2t`, per caption
for `t2i`, the union of both for `both`.
Stage 2: only shortlisted pairs get the local score L from another registered aligner (`local`,
built by name with `local_options`), scored pair by pair in chunks (`Aligner.score_pairs`); the
full local matrix is never computed, which is the point of two stages. A shortlisted pair scores
α·G + (1−α)·L.

Everything outside the shortlist must rank below every shortlisted candidate: a true match that
the global stage missed is a miss, never a hit. Such an entry gets

    m − 1 − (G_max − G_ij),    m = the smallest mixed score of any shortlisted pair,

which is finite, strictly below every shortlisted score (of any query, so the rule holds along
rows and columns alike), and keeps the global order among non-shortlisted candidates.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from finealign.aligners.base import Aligner, AlignerConfig, TokenAlignment, global_vectors, resolve_pairs
from finealign.aligners.validation import check_pair
from finealign.errors import ConfigError
from finealign.registry import ALIGNERS, build_config, config_class, ensure_builtins
from finealign.tokens import TokenBatch

DIRECTIONS = ("both", "i2t", "t2i")


@dataclass
class TwoStageConfig(AlignerConfig):
    local: str = "mean_max"  # the registered aligner that re-ranks the shortlist
    local_options: dict = field(default_factory=dict)  # its options, checked by its own Config
    top_k: int = 10  # shortlist length per query
    alpha: float = 0.5  # weight of the global score in the mixed score
    direction: str = "both"  # whose shortlist: "i2t" per image, "t2i" per caption, "both" = union

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"top_k must be a positive int, got {self.top_k!r}")
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not math.isfinite(self.alpha)
            or not 0.0 <= self.alpha <= 1.0
        ):
            raise ConfigError(f"alpha must be a number in [0, 1], got {self.alpha!r}")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if not isinstance(self.local, str):
            raise ConfigError(f"local must be an aligner name (str), got {self.local!r}")
        if self.local == "two_stage":
            raise ConfigError("local cannot be 'two_stage' itself; name a token-level aligner")
        if not isinstance(self.local_options, dict):
            raise ConfigError(f"local_options must be a dict, got {type(self.local_options).__name__}")
        # Fail at config time (e.g. inside a sweep) on an unknown name (UnknownNameError) or a bad option.
        ensure_builtins("aligners")
        local_config = config_class(ALIGNERS.get(self.local))
        if local_config is not None:
            build_config(local_config, self.local_options, f"two_stage local aligner {self.local!r}")


@ALIGNERS.register("two_stage")
class TwoStageAligner(Aligner):
    """Global top-K shortlist, re-ranked by α·global + (1−α)·local on shortlisted pairs only (TGDT)."""

    Config = TwoStageConfig

    def __init__(self, config: TwoStageConfig | None = None):
        super().__init__(config)
        local = ALIGNERS.build(self.config.local, **self.config.local_options)
        if not isinstance(local, Aligner):
            raise ConfigError(f"local aligner {self.config.local!r} is a {type(local).__name__}, not an Aligner")
        self.local = local

    def forward(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        check_pair(visual, text)
        glob = self.global_similarity(visual, text)
        if self.training:
            # TGDT trains the global and local branches on every pair of the batch; the shortlist
            # is an inference procedure. (Through the shortlist, a positive outside the top-K would
            # get a floor score and no useful gradient: training then stays at chance.)
            return self.config.alpha * glob + (1 - self.config.alpha) * self.local(visual, text).to(glob.dtype)
        pairs = self.shortlist(glob).nonzero()  # (P, 2) shortlisted (image, caption) pairs
        local = self.local.score_pairs(visual, text, pairs)
        mixed = self.config.alpha * glob[pairs[:, 0], pairs[:, 1]] + (1 - self.config.alpha) * local.to(glob.dtype)
        # Outside the shortlist: strictly below every shortlisted score, global order kept.
        out = mixed.min() - 1.0 - (glob.max() - glob)
        return out.index_put((pairs[:, 0], pairs[:, 1]), mixed)

    def score_pairs(self, visual: TokenBatch, text: TokenBatch, pairs: Tensor | None = None) -> Tensor:
        """Entries of this aligner's matrix at `pairs` (see Aligner.score_pairs).

        A pair's two-stage score depends on the whole candidate set (did it make the shortlist,
        and the floor m of the shortlisted scores), so this runs the two stages on all of
        `visual` × `text` (local scores still only on the shortlist) and reads the pairs off.
        """
        check_pair(visual, text)
        pairs = resolve_pairs(visual, text, pairs)
        return self(visual, text)[pairs[:, 0], pairs[:, 1]]

    def global_similarity(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        """(Nv, Nt) global similarity: cosine of the pooled (or masked-mean) vectors when `normalize`."""
        v, t = global_vectors(visual), global_vectors(text)
        if self.config.normalize:
            v, t = F.normalize(v, dim=-1), F.normalize(t, dim=-1)
        return v @ t.T

    def shortlist(self, glob: Tensor) -> Tensor:
        """(Nv, Nt) bool: True where a pair is in some query's global top-K (per `direction`)."""
        keep = torch.zeros_like(glob, dtype=torch.bool)
        if self.config.direction in ("i2t", "both"):
            k = min(self.config.top_k, glob.shape[1])
            keep.scatter_(1, glob.topk(k, dim=1).indices, True)
        if self.config.direction in ("t2i", "both"):
            k = min(self.config.top_k, glob.shape[0])
            keep.scatter_(0, glob.topk(k, dim=0).indices, True)
        return keep

    def explain(self, visual: TokenBatch, text: TokenBatch) -> TokenAlignment:
        """The local aligner's token alignment, with the score replaced by this aligner's mixed score."""
        alignment = self.local.explain(visual, text)
        return dataclasses.replace(alignment, score=float(self(visual, text)[0, 0]))
