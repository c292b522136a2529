"""Inner-product top-K search over global vectors with FAISS: exact (Flat) or approximate (IVF, HNSW).

Used by `two_stage`'s optional FAISS first stage and by the on-disk galleries of
`finealign.search`. faiss is optional (`pip install 'finealign[faiss]'`, which pulls faiss-cpu;
a faiss-gpu build works the same): it is imported only when an index is built or read.

Results are ordered by score (descending), ties by gallery id (ascending), so a Flat search gives
exactly the ids of a brute-force top-K. FAISS orders equal scores as it finds them, so a search asks
for `TIE_MARGIN` extra neighbours and sorts them by the rule; a run of more than TIE_MARGIN equal
scores straddling position K could still be cut in FAISS's order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from finealign.checks import check_choice, check_int, check_positive_int
from finealign.errors import ConfigError, PluginError, ShapeError

INDEX_KINDS = ("flat", "ivf", "hnsw")
TIE_MARGIN = 8
_ADD_CHUNK = 65536  # vectors added per call: a memory-mapped input is read a slice at a time


@dataclass
class IndexSpec:
    """Which FAISS index to build over the vectors, and its knobs (inner-product metric)."""

    kind: str = "flat"  # "flat" (exact), "ivf" (IndexIVFFlat) or "hnsw" (IndexHNSWFlat)
    ivf_lists: int | None = None  # IVF cells; null: √N, at most N/39 (FAISS wants ≥ 39 training points a cell)
    ivf_probe: int = 32  # IVF cells visited per query (more: higher recall, slower)
    ivf_train: int | None = None  # vectors sampled to train the cells; null: min(N, 64 per cell)
    hnsw_m: int = 32  # HNSW neighbours per node
    hnsw_ef_construction: int = 80  # HNSW build-time beam width
    hnsw_ef_search: int = 128  # HNSW query-time beam width (≥ K is sensible)
    seed: int = 0  # IVF training sample and k-means seed

    def __post_init__(self) -> None:
        check_choice("index kind", self.kind, INDEX_KINDS)
        check_positive_int("ivf_lists", self.ivf_lists, optional=True)
        check_positive_int("ivf_train", self.ivf_train, optional=True)
        for key in ("ivf_probe", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search"):
            check_positive_int(key, getattr(self, key))
        check_int("seed", self.seed, low=0)

    @classmethod
    def from_options(cls, kind: str, options: dict[str, Any], where: str) -> IndexSpec:
        """A spec from a kind and a dict of knobs; unknown knobs raise ConfigError naming `where`."""
        known = {k for k in asdict(cls()) if k != "kind"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown index option(s) {unknown}; known: {sorted(known)}")
        return cls(kind=kind, **options)

    def knobs(self) -> dict[str, Any]:
        """The options that matter for this kind (what a manifest records)."""
        prefix = {"flat": (), "ivf": ("ivf_", "seed"), "hnsw": ("hnsw_",)}[self.kind]
        return {k: v for k, v in asdict(self).items() if k != "kind" and prefix and k.startswith(prefix)}

    def resolved_lists(self, count: int) -> int:
        """IVF cells for `count` vectors: the option, or √N capped at N/39."""
        if self.ivf_lists is None:
            return max(1, min(round(math.sqrt(count)), count // 39))
        if self.ivf_lists > count:
            raise ConfigError(f"ivf_lists={self.ivf_lists} exceeds the {count} vectors to index")
        return self.ivf_lists


def require_faiss():
    """The faiss module, or PluginError saying what to install."""
    try:
        import faiss
    except ImportError as exc:
        raise PluginError(
            "FAISS indexes need the `faiss` package: pip install 'finealign[faiss]' (faiss-cpu), or a faiss-gpu build"
        ) from exc
    return faiss


def _as_float32_rows(vectors: np.ndarray, name: str) -> np.ndarray:
    if vectors.ndim != 2:
        raise ShapeError(f"{name} must be (N, d), got shape {tuple(vectors.shape)}")
    return np.ascontiguousarray(vectors, dtype=np.float32)


def build_index(vectors: np.ndarray, spec: IndexSpec) -> Any:
    """A FAISS inner-product index of `spec.kind` over (N, d) vectors (a memory map is read in slices)."""
    faiss = require_faiss()
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ShapeError(f"vectors to index must be a non-empty (N, d) array, got shape {tuple(vectors.shape)}")
    count, dim = vectors.shape
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.hnsw_ef_construction
    else:
        lists = spec.resolved_lists(count)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = spec.seed
        train = min(count, spec.ivf_train or 64 * lists)
        rows = np.sort(np.random.default_rng(spec.seed).choice(count, size=train, replace=False))
        index.train(_as_float32_rows(vectors[rows], "training vectors"))
    for start in range(0, count, _ADD_CHUNK):
        index.add(_as_float32_rows(vectors[start : start + _ADD_CHUNK], "vectors"))
    set_search_knobs(index, spec)
    return index


def set_search_knobs(index: Any, spec: IndexSpec) -> None:
    """Apply the query-time knobs (IVF nprobe, HNSW efSearch) to a built or loaded index."""
    faiss = require_faiss()
    ivf = faiss.try_extract_index_ivf(index) if spec.kind == "ivf" else None
    if ivf is not None:
        ivf.nprobe = min(spec.ivf_probe, ivf.nlist)
    if spec.kind == "hnsw":
        index.hnsw.efSearch = spec.hnsw_ef_search


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (nq, k'), k' = min(k, N): the top-k by inner product, ordered by score
    descending then id ascending. An approximate index that finds fewer than k' gives id -1 and
    score -inf in the missing places (at the end of the row)."""
    check_positive_int("k", k)
    queries = _as_float32_rows(queries, "queries")
    if queries.shape[1] != index.d:
        raise ShapeError(f"queries have d={queries.shape[1]} but the index holds d={index.d} vectors")
    want = min(k, index.ntotal)
    faiss = require_faiss()
    threads = faiss.omp_get_max_threads()
    # FAISS spreads a search over its queries: with fewer queries than threads the spare OpenMP
    # workers have nothing to do but spin afterwards, taking cores from the re-ranking that
    # follows. Wake no more workers than queries.
    faiss.omp_set_num_threads(max(1, min(threads, len(queries))))
    try:
        scores, ids = index.search(queries, min(want + TIE_MARGIN, index.ntotal))
    finally:
        faiss.omp_set_num_threads(threads)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    # Missing entries (id -1) sort last: their key is +inf id after -inf score.
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=-1)[:, :want]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def brute_force_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the full (nq, N) float32 score matrix, sorted by score then id (no FAISS)."""
    scores = _as_float32_rows(queries, "queries") @ _as_float32_rows(vectors, "vectors").T
    ids = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.lexsort((ids, -scores), axis=-1)[:, : min(k, scores.shape[1])]
    return np.take_along_axis(scores, order, 1), order.astype(np.int64)


def write_index(index: Any, path: str) -> None:
    require_faiss().write_index(index, str(path))


def read_index(path: str, spec: IndexSpec) -> Any:
    index = require_faiss().read_index(str(path))
    set_search_knobs(index, spec)
    return index
