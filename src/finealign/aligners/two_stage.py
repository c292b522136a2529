"""Two-stage retrieval (TGDT-style inference): a global shortlist, re-ranked by a mixed global/local score.

Retrieval with this aligner is directional, and each query sees only its own shortlist:

* an image query (i2t) shortlists its top-`top_k_i2t` captions by global cosine similarity G
  (pooled vectors, or the masked token mean when an encoder gives none);
* a caption query (t2i) shortlists its top-`top_k_t2i` images.

Only shortlisted pairs get the local score L from another registered aligner (`local`, built by
name with `local_options`), scored pair by pair in chunks (`Aligner.score_pairs`); the full local
matrix is never computed, which is the point of two stages. A shortlisted pair scores
α·G + (1−α)·L (`mix: convex`) or G + L (`mix: sum`, TGDT's d_global + d_local).

Because a pair's score depends on the gallery (did it make this query's shortlist?), the aligner
is `gallery_dependent`: `query_scores(visual, text, "i2t")` gives the matrix as image queries
see it, `"t2i"` as caption queries see it, and the engine evaluates each direction from its own
matrix. There is no union of both directions' shortlists: it let an image rank a caption that
only the caption's shortlist held, which inflated recall. `forward` scores the direction named
by `direction` (used when the aligner is called directly, e.g. for profiling).

Everything outside the shortlist must rank below every shortlisted candidate: a true match that
the global stage missed is a miss, never a hit (TGDT's own recall code counts it as a hit; that
bug is not reproduced). Such an entry gets

    m − 1 − (G_max − G_ij),    m = the smallest mixed score of any shortlisted pair,

which is finite, strictly below every shortlisted score, and keeps the global order among
non-shortlisted candidates.

The first stage is the exact global matrix's top-K (`first_stage: exact`, the default) or a FAISS
index built over the gallery side's global vectors for each call (`faiss_flat`: exact up to float
rounding of near-ties; `faiss_ivf`, `faiss_hnsw`: approximate, knobs in `first_stage_options`,
see `finealign.ann.IndexSpec`). Either way the shortlisted pairs' mixed scores and the
out-of-shortlist rule use the exact global matrix; only which pairs are shortlisted changes.

Training scores every pair of the batch (the shortlist is an inference procedure): the mixed
score (`train_score: mixed`), or the local score alone (`train_score: local`), which with the
`cmc` loss gives TGDT's training — each branch has its own hinge (cmc adds the global one).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from finealign.aligners.base import (
    QUERY_DIRECTIONS,
    Aligner,
    AlignerConfig,
    PreparedGallery,
    TokenAlignment,
    check_query_direction,
    gallery_key,
    global_vectors,
    resolve_pairs,
)
from finealign.aligners.validation import check_pair
from finealign.ann import IndexSpec, build_index, require_faiss, search
from finealign.checks import check_positive_int
from finealign.errors import ConfigError
from finealign.kernels.normalize import l2_normalize
from finealign.registry import ALIGNERS, build_config, config_class, ensure_builtins
from finealign.tokens import TokenBatch

MIXES = ("convex", "sum")
TRAIN_SCORES = ("mixed", "local")
#: first_stage → the FAISS index kind it builds (None: the exact global matrix's top-K)
FIRST_STAGES = {"exact": None, "faiss_flat": "flat", "faiss_ivf": "ivf", "faiss_hnsw": "hnsw"}


def _check_top_k(key: str, value: object, optional: bool) -> None:
    check_positive_int(key, value, optional=optional)


@dataclass
class TwoStageConfig(AlignerConfig):
    local: str = "mean_max"  # the registered aligner that re-ranks the shortlist
    local_options: dict = field(default_factory=dict)  # its options, checked by its own Config
    top_k: int = 10  # shortlist length per query, both directions unless overridden below
    top_k_i2t: int | None = None  # captions shortlisted per image query (null: top_k; TGDT: 50)
    top_k_t2i: int | None = None  # images shortlisted per caption query (null: top_k; TGDT: 100)
    alpha: float = 0.5  # weight of the global score in the convex mix
    mix: str = "convex"  # "convex": α·G + (1−α)·L; "sum": G + L (TGDT; α unused)
    train_score: str = "mixed"  # training scores every batch pair by: "mixed" or "local" (TGDT)
    direction: str = "i2t"  # whose shortlists `forward` uses; evaluation scores both directions
    first_stage: str = "exact"  # shortlist from: "exact" global top-K, "faiss_flat", "faiss_ivf", "faiss_hnsw"
    first_stage_options: dict = field(default_factory=dict)  # FAISS knobs (finealign.ann.IndexSpec), e.g. ivf_probe

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_top_k("top_k", self.top_k, optional=False)
        _check_top_k("top_k_i2t", self.top_k_i2t, optional=True)
        _check_top_k("top_k_t2i", self.top_k_t2i, optional=True)
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not math.isfinite(self.alpha)
            or not 0.0 <= self.alpha <= 1.0
        ):
            raise ConfigError(f"alpha must be a number in [0, 1], got {self.alpha!r}")
        if self.mix not in MIXES:
            raise ConfigError(f"mix must be one of {MIXES}, got {self.mix!r}")
        if self.train_score not in TRAIN_SCORES:
            raise ConfigError(f"train_score must be one of {TRAIN_SCORES}, got {self.train_score!r}")
        if self.direction == "both":
            raise ConfigError(
                "direction 'both' (the union of image- and caption-side shortlists) was removed: it let "
                "a query rank candidates that only another query's shortlist held, which inflates recall. "
                "Evaluation now scores each direction from its own shortlists; direction only chooses "
                f"what forward() returns, one of {QUERY_DIRECTIONS}"
            )
        if self.direction not in QUERY_DIRECTIONS:
            raise ConfigError(f"direction must be one of {QUERY_DIRECTIONS}, got {self.direction!r}")
        if not isinstance(self.local, str):
            raise ConfigError(f"local must be an aligner name (str), got {self.local!r}")
        if self.local == "two_stage":
            raise ConfigError("local cannot be 'two_stage' itself; name a token-level aligner")
        if not isinstance(self.local_options, dict):
            raise ConfigError(f"local_options must be a dict, got {type(self.local_options).__name__}")
        if self.first_stage not in FIRST_STAGES:
            raise ConfigError(f"first_stage must be one of {tuple(FIRST_STAGES)}, got {self.first_stage!r}")
        if not isinstance(self.first_stage_options, dict):
            raise ConfigError(f"first_stage_options must be a dict, got {type(self.first_stage_options).__name__}")
        if self.first_stage == "exact" and self.first_stage_options:
            raise ConfigError(
                f"first_stage_options {sorted(self.first_stage_options)} apply to a FAISS first stage, "
                "but first_stage is 'exact'"
            )
        if self.index_spec() is not None:  # unknown or bad knobs fail here, and a missing faiss
            require_faiss()
        # Fail at config time (e.g. inside a sweep) on an unknown name (UnknownNameError) or a bad option.
        ensure_builtins("aligners")
        local_config = config_class(ALIGNERS.get(self.local))
        if local_config is not None:
            build_config(local_config, self.local_options, f"two_stage local aligner {self.local!r}")

    def index_spec(self) -> IndexSpec | None:
        """The FAISS index the first stage builds, or None for the exact global top-K."""
        kind = FIRST_STAGES[self.first_stage]
        if kind is None:
            return None
        return IndexSpec.from_options(kind, self.first_stage_options, f"two_stage first_stage {self.first_stage!r}")

    def shortlist_length(self, queries: str) -> int:
        """How many candidates a query of this direction shortlists."""
        override = self.top_k_i2t if queries == "i2t" else self.top_k_t2i
        return self.top_k if override is None else override


@ALIGNERS.register("two_stage")
class TwoStageAligner(Aligner[TwoStageConfig]):
    """Global top-K shortlist, re-ranked by α·global + (1−α)·local on shortlisted pairs only (TGDT-style; TGDT's is method=tgdt)."""

    Config = TwoStageConfig
    gallery_dependent = True  # a pair's score depends on whether it made its query's shortlist

    def __init__(self, config: TwoStageConfig | None = None):
        super().__init__(config)
        local = ALIGNERS.build(self.config.local, **self.config.local_options)
        if not isinstance(local, Aligner):
            raise ConfigError(f"local aligner {self.config.local!r} is a {type(local).__name__}, not an Aligner")
        self.local = local

    def forward(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        if self.training:
            # TGDT trains the global and local branches on every pair of the batch; the shortlist
            # is an inference procedure. (Through the shortlist, a positive outside the top-K would
            # get a floor score and no useful gradient: training then stays at chance.)
            check_pair(visual, text)
            local = self.local(visual, text)
            if self.config.train_score == "local":
                return local
            return self.mix(self.global_similarity(visual, text), local)
        return self.query_scores(visual, text, self.config.direction)

    def query_scores(self, visual: TokenBatch, text: TokenBatch, queries: str) -> Tensor:
        """(Nv, Nt) two-stage scores as image queries ("i2t", per-row shortlists) or caption
        queries ("t2i", per-column shortlists) rank them; see the module docstring."""
        check_query_direction(queries)
        check_pair(visual, text)
        return self.query_scores_prepared(visual, self.build_gallery(text), queries)

    def build_gallery(self, text: TokenBatch) -> PreparedGallery:
        """The captions' global vectors (normalised when `normalize`), the FAISS index over them
        that image queries search (a FAISS first stage), and the captions as the local aligner
        prepares them for its pair scores (when it uses the base class's `score_pairs`)."""
        t = global_vectors(text)
        t = l2_normalize(t) if self.config.normalize else t
        extras: dict[str, Any] = {"global": t}
        spec = self.config.index_spec()
        if spec is not None:
            extras["index_i2t"] = build_index(t.detach().float().cpu().numpy(), spec)
        if not self.local._overrides("score_pairs"):
            extras["local_text"] = self.local.prepare(text)
        return PreparedGallery(captions=text, prepared_by=gallery_key(self), text=text, extras=extras)

    def score_against(self, visual: TokenBatch, gallery: PreparedGallery) -> Tensor:
        if self.training:  # training scores every pair (see forward)
            return self(visual, gallery.captions)
        return self.query_scores_prepared(visual, gallery, self.config.direction)

    def query_scores_prepared(self, visual: TokenBatch, gallery: PreparedGallery, queries: str) -> Tensor:
        """`query_scores` against a prepared caption gallery (the same matrix)."""
        check_query_direction(queries)
        self.check_gallery(visual, gallery)
        v = global_vectors(visual)
        v = l2_normalize(v) if self.config.normalize else v
        t = gallery.extras["global"]
        glob = v @ t.T
        spec = self.config.index_spec()
        if spec is None:
            keep = self.shortlist(glob, queries)
        else:
            keep = self.index_shortlist(v, t, queries, spec, index=gallery.extras.get(f"index_{queries}"))
        pairs = keep.nonzero()  # (P, 2) shortlisted (image, caption) pairs
        if "local_text" in gallery.extras:
            local = self.local.score_prepared_pairs(self.local.prepare(visual), gallery.extras["local_text"], pairs)
        else:
            local = self.local.score_pairs(visual, gallery.captions, pairs)
        mixed = self.mix(glob[pairs[:, 0], pairs[:, 1]], local)
        # Outside the shortlist: strictly below every shortlisted score, global order kept.
        out = mixed.min() - 1.0 - (glob.max() - glob)
        return out.index_put((pairs[:, 0], pairs[:, 1]), mixed)

    def mix(self, glob: Tensor, local: Tensor) -> Tensor:
        """The mixed score of pairs from their global and local scores (`mix` option)."""
        local = local.to(glob.dtype)
        if self.config.mix == "sum":
            return glob + local
        return self.config.alpha * glob + (1 - self.config.alpha) * local

    def score_pairs(self, visual: TokenBatch, text: TokenBatch, pairs: Tensor | None = None) -> Tensor:
        """Entries of this aligner's matrix (as `forward` gives it) at `pairs` (see Aligner.score_pairs).

        A pair's two-stage score depends on the whole candidate set (did it make the shortlist,
        and the floor m of the shortlisted scores), so this runs the two stages on all of
        `visual` × `text` (local scores still only on the shortlist) and reads the pairs off.
        """
        check_pair(visual, text)
        pairs = resolve_pairs(visual, text, pairs)
        return self(visual, text)[pairs[:, 0], pairs[:, 1]]

    def global_similarity(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        """(Nv, Nt) global similarity: cosine of the pooled (or masked-mean) vectors when `normalize`."""
        v, t = self.global_pair(visual, text)
        return v @ t.T

    def global_pair(self, visual: TokenBatch, text: TokenBatch) -> tuple[Tensor, Tensor]:
        """The (Nv, d) and (Nt, d) global vectors the first stage compares (L2-normalised when `normalize`)."""
        v, t = global_vectors(visual), global_vectors(text)
        if self.config.normalize:
            v, t = l2_normalize(v), l2_normalize(t)
        return v, t

    def index_shortlist(self, v: Tensor, t: Tensor, queries: str, spec: IndexSpec, index: Any = None) -> Tensor:
        """`shortlist` from a FAISS index over the gallery side's global vectors (captions for
        "i2t", images for "t2i"), searched with the query side's. An approximate index may return
        fewer than K candidates for a query; the missing ones are simply not shortlisted. `index`:
        that index when already built (a prepared gallery), else it is built here."""
        check_query_direction(queries)
        query_vecs, gallery = (v, t) if queries == "i2t" else (t, v)
        if index is None:
            index = build_index(gallery.detach().float().cpu().numpy(), spec)
        k = min(self.config.shortlist_length(queries), len(gallery))
        ids = torch.from_numpy(search(index, query_vecs.detach().float().cpu().numpy(), k)[1])
        rows = torch.arange(len(query_vecs)).unsqueeze(1).expand_as(ids)
        found = ids >= 0
        keep = torch.zeros(len(query_vecs), len(gallery), dtype=torch.bool)
        keep[rows[found], ids[found]] = True
        keep = keep.to(v.device)
        return keep if queries == "i2t" else keep.T

    def shortlist(self, glob: Tensor, queries: str) -> Tensor:
        """(Nv, Nt) bool: True where a pair is in its query's global top-K — per image row for
        "i2t", per caption column for "t2i"."""
        check_query_direction(queries)
        keep = torch.zeros_like(glob, dtype=torch.bool)
        dim = 1 if queries == "i2t" else 0
        k = min(self.config.shortlist_length(queries), glob.shape[dim])
        return keep.scatter_(dim, glob.topk(k, dim=dim).indices, True)

    def reset_diagnostics(self) -> None:
        self.local.reset_diagnostics()

    def diagnostics(self) -> dict[str, float]:
        """The local aligner's (e.g. tokenflow's convergence on the shortlisted pairs)."""
        return self.local.diagnostics()

    def explain(self, visual: TokenBatch, text: TokenBatch) -> TokenAlignment:
        """The local aligner's token alignment, with the score replaced by this aligner's mixed score."""
        alignment = self.local.explain(visual, text)
        return dataclasses.replace(alignment, score=float(self(visual, text)[0, 0]))
