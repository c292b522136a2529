"""An on-disk retrieval gallery: global vectors under FAISS indexes, tokens in a float16 memory map.

One folder per gallery (the feature cache's conventions: .npy arrays plus a JSON written last):

    manifest.json      feature source, modality, dim, count, normalisation, arrays, indexes
    global.npy         (N, d) float32 global vectors (pooled, or the token mean), L2-normalised
                       when `normalize` — what the indexes hold and what a brute-force scan reads
    tokens.npy, offsets.npy   the packed token store (finealign.search.store)
    index-<name>.faiss one file per index; manifest["indexes"][name] = kind, knobs, build time

Integrity (finealign.search.integrity): the manifest records each file's size and SHA-256, opening
checks them (hashes up to a size), `verify_gallery` / `finealign search verify` checks everything;
every item is checked when it is added (finite, >= 1 real token), and a build checks the free disk
space first and reserves its memory maps (a full disk is a DiskFullError, never a SIGBUS).

`Gallery.query` ranks queries of the other modality (images against a caption gallery, or
captions against an image gallery): the first stage searches an index for each query's shortlist,
and with `rerank=` the shortlisted items' tokens are read from the memory map and scored by a
registered aligner through `score_pairs` — by its score alone, or for a `two_stage` aligner by its
mixed global/local score, equal to what `two_stage` computes for the same shortlist.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finealign.aligners.base import Aligner, global_vectors, prepare_gallery, score_queries
from finealign.aligners.two_stage import TwoStageAligner
from finealign.ann import IndexSpec, build_index, read_index, search, write_index
from finealign.cache.build import remove_stale_temporaries
from finealign.checks import check_choice, check_int, check_positive_int
from finealign.errors import ConfigError, DataError, ShapeError
from finealign.formats.feature_cache import array_record
from finealign.kernels.normalize import l2_normalize
from finealign.resources import check_disk, disk_full_named, preallocate
from finealign.search.integrity import ARRAY_FILES, GLOBAL_FILE, file_record, gallery_problems, index_path
from finealign.search.manifest import read_manifest, write_manifest
from finealign.search.store import TokenStore, TokenStoreWriter
from finealign.tokens import TokenBatch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODALITIES = ("visual", "text")
QUERY_KNOBS = ("ivf_probe", "hnsw_ef_search")  # what a query may change; the rest is fixed by the build


class GalleryWriter:
    """Writes a gallery chunk by chunk; `finish` builds the indexes and writes the manifest last.

    The gallery is assembled in a temporary sibling folder and renamed into place, so a crashed
    build leaves no folder that looks finished.
    """

    def __init__(self, folder: Path, *, count: int, total_tokens: int, dim: int, modality: str,
                 feature_source: str, normalize: bool = True):  # fmt: skip
        check_choice("modality", modality, MODALITIES)
        if not isinstance(feature_source, str) or not feature_source:
            raise ConfigError(f"feature_source must name where the features came from, got {feature_source!r}")
        self.folder = Path(folder)
        if self.folder.exists():
            raise ConfigError(f"{self.folder} already exists: choose a new folder for the gallery")
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder.parent, self.folder.name)  # left by killed builds
        # tokens (float16), global vectors (float32) and offsets, and a flat index's copy of the vectors
        check_disk(self.folder.parent, total_tokens * dim * 2 + 2 * count * dim * 4 + 8 * (count + 1) + (1 << 20),
                   f"gallery {self.folder} ({count} items, {total_tokens} tokens, d={dim})")  # fmt: skip
        self.tmp = self.folder.parent / f".{self.folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        self.meta = {"format": FORMAT_VERSION, "modality": modality, "feature_source": feature_source,
                     "dim": dim, "count": count, "total_tokens": total_tokens, "normalized": normalize}  # fmt: skip
        try:
            with disk_full_named(self.folder.parent, f"gallery {self.folder}"):
                self.store = TokenStoreWriter(self.tmp, count, total_tokens, dim)
                self.globals = np.lib.format.open_memmap(self.tmp / GLOBAL_FILE, "w+", np.float32, (count, dim))
                preallocate(self.tmp / GLOBAL_FILE)  # a full disk: ENOSPC now, not SIGBUS at a write
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self.start = time.perf_counter()

    def add(self, tokens: np.ndarray, mask: np.ndarray, pooled: np.ndarray | None = None) -> None:
        """Append (n, L, d) tokens, their (n, L) mask and optional (n, d) pooled vectors (else the
        token mean); an item without a real token or with a NaN/inf is refused (DataError)."""
        first = self.store.items
        _check_items(tokens, mask, pooled, first)
        self.store.add(tokens, mask)
        # Copies (np.array): memory-mapped inputs are read-only, torch wants writable arrays.
        batch = TokenBatch(torch.from_numpy(np.array(tokens, dtype=np.float32)), torch.from_numpy(np.array(mask, dtype=bool)),
                           None if pooled is None else torch.from_numpy(np.array(pooled, dtype=np.float32)))  # fmt: skip
        vectors = global_vectors(batch)
        if self.meta["normalized"]:
            vectors = l2_normalize(vectors)
        self.globals[first : first + len(tokens)] = vectors.numpy()

    def abort(self) -> None:
        """Drop the half-built gallery (the temporary folder)."""
        shutil.rmtree(self.tmp, ignore_errors=True)

    def finish(self, indexes: dict[str, IndexSpec]) -> Path:
        """Close the arrays, build each named index over the global vectors, move the gallery into place."""
        try:
            self.store.close()
            self.globals.flush()
            del self.globals
            self.meta["seconds_store"] = time.perf_counter() - self.start
            with disk_full_named(self.folder.parent, f"gallery {self.folder}"):
                # shape, dtype, size and SHA-256 (finealign.search.integrity checks them)
                self.meta["arrays"] = {n: array_record(self.tmp / n) for n in ARRAY_FILES}
                self.meta["indexes"] = {name: _build_index_file(self.tmp, name, spec) for name, spec in indexes.items()}
                self.meta["complete"] = True  # written last: a manifest without it is no gallery
                write_manifest(self.tmp, self.meta)
                os.rename(self.tmp, self.folder)
        finally:
            if self.tmp.exists():
                shutil.rmtree(self.tmp, ignore_errors=True)
        return self.folder


def _check_items(tokens: np.ndarray, mask: np.ndarray, pooled: np.ndarray | None, first: int) -> None:
    """Every item has >= 1 real token, and its real tokens and pooled vector are finite."""
    mask = np.asarray(mask, dtype=bool)
    empty = np.flatnonzero(mask.sum(1) == 0)
    if len(empty):
        raise DataError(f"gallery item {first + int(empty[0])} has no real token (mask all False): "
                        f"{len(empty)} such item(s) in this chunk; every item needs >= 1 token")  # fmt: skip
    bad = np.flatnonzero(~np.isfinite(np.where(mask[..., None], tokens, 0)).all(axis=(1, 2)))
    if pooled is not None:
        bad = np.union1d(bad, np.flatnonzero(~np.isfinite(pooled).all(axis=1)))
    if len(bad):
        raise DataError(f"gallery item {first + int(bad[0])} holds NaN or inf features ({len(bad)} such item(s) "
                        "in this chunk): a gallery stores finite vectors only")  # fmt: skip


def _check_index_name(name: str) -> None:
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"index name must be letters, digits, '-' or '_', got {name!r}")


def _build_index_file(folder: Path, name: str, spec: IndexSpec) -> dict[str, Any]:
    _check_index_name(name)
    start = time.perf_counter()
    index = build_index(np.load(Path(folder) / GLOBAL_FILE, mmap_mode="r"), spec)
    path = Path(folder) / f"index-{name}.faiss"
    write_index(index, str(path))
    seconds = time.perf_counter() - start
    log.info("built index %r (%s) over %d vectors in %.1f s", name, spec.kind, index.ntotal, seconds)
    return {"kind": spec.kind, "knobs": spec.knobs(), "file": path.name, "build_seconds": seconds, **file_record(path)}


def add_index(folder: Path, name: str, spec: IndexSpec) -> dict[str, Any]:
    """Build one more index over a finished gallery's stored global vectors; returns its manifest record."""
    manifest = read_manifest(folder)
    if name in manifest["indexes"]:
        raise ConfigError(f"gallery {folder} already has an index named {name!r}")
    record = _build_index_file(Path(folder), name, spec)
    manifest["indexes"][name] = record
    write_manifest(Path(folder), manifest)
    return record


def write_gallery(folder: Path, tokens: np.ndarray, mask: np.ndarray, pooled: np.ndarray | None, *,
                  modality: str, feature_source: str, indexes: dict[str, IndexSpec], normalize: bool = True,
                  chunk: int = 4096) -> Path:  # fmt: skip
    """A gallery from (N, L, d) tokens, (N, L) mask and optional (N, d) pooled arrays (memory maps
    are read `chunk` items at a time)."""
    if tokens.ndim != 3 or mask.shape != tokens.shape[:2]:
        raise ShapeError(f"tokens must be (N, L, d) with an (N, L) mask, got {tokens.shape} and {mask.shape}")
    if pooled is not None and pooled.shape != (tokens.shape[0], tokens.shape[2]):
        raise ShapeError(f"pooled must be (N, d) = {(tokens.shape[0], tokens.shape[2])}, got {pooled.shape}")
    writer = GalleryWriter(folder, count=len(tokens), total_tokens=int(np.asarray(mask).sum()), dim=tokens.shape[2],
                           modality=modality, feature_source=feature_source, normalize=normalize)  # fmt: skip
    try:
        for start in range(0, len(tokens), chunk):
            part = slice(start, start + chunk)
            writer.add(
                np.asarray(tokens[part]), np.asarray(mask[part]), None if pooled is None else np.asarray(pooled[part])
            )
    except BaseException:
        writer.abort()  # a refused item or a full disk leaves no half-built folder
        raise
    return writer.finish(indexes)


@dataclass
class SearchResult:
    """Per query, the top-k gallery ids and their scores (final: re-ranked when asked), best first.

    ids: (nq, k) int64 (-1 where an approximate first stage found fewer), scores: (nq, k) float32,
    global_scores: (nq, k) the first-stage inner products of the same items.
    """

    ids: np.ndarray
    scores: np.ndarray
    global_scores: np.ndarray


def _check_query_knobs(knobs: dict[str, Any], record: dict[str, Any], name: str) -> None:
    """A query may change the query-time knobs of its index's kind only: a build-time knob (ivf_lists,
    hnsw_m, ...) or another kind's knob would be silently ignored."""
    fixed = sorted(k for k in knobs if k not in QUERY_KNOBS)
    if fixed:
        raise ConfigError(f"{', '.join(fixed)}: fixed when index {name!r} was built ({record.get('knobs')}); "
                          f"a query may set {' or '.join(QUERY_KNOBS)} only (build another index for others)")  # fmt: skip
    foreign = sorted(k for k in knobs if k not in record.get("knobs", {}))
    if foreign:
        raise ConfigError(f"{', '.join(foreign)}: index {name!r} is {record.get('kind')!r} and has no such knob")


class Gallery:
    """A finished gallery opened for queries with one of its indexes (tokens memory-mapped)."""

    def __init__(self, folder: Path, index: str | None = None, knobs: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        problems = gallery_problems(self.folder, self.manifest)
        if problems:
            raise DataError(f"gallery {self.folder} is damaged: " + "; ".join(problems))
        indexes = self.manifest["indexes"]
        if not indexes:
            raise DataError(f"gallery {self.folder} has no index: add one (finealign search build --index ...)")
        self.index_name = index if index is not None else next(iter(indexes))
        if self.index_name not in indexes:
            raise ConfigError(f"gallery {self.folder} has no index {self.index_name!r}; it has {sorted(indexes)}")
        record = indexes[self.index_name]
        # Query-time knobs (ivf_probe, hnsw_ef_search) may be changed at open; build-time ones are fixed.
        _check_query_knobs(knobs or {}, record, self.index_name)
        self.spec = IndexSpec.from_options(
            record["kind"], {**record["knobs"], **(knobs or {})}, f"index {self.index_name!r}"
        )
        try:
            self.index = read_index(str(index_path(self.folder, record, self.index_name)), self.spec)
        except RuntimeError as exc:  # FAISS's reader on damaged bytes
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"gallery {self.folder}: index {self.index_name!r} cannot be read ({first}); "
                            "rebuild the gallery (finealign search verify names what changed)") from exc  # fmt: skip
        self.store = TokenStore(self.folder)
        self.globals = np.load(self.folder / GLOBAL_FILE, mmap_mode="r")  # read only at shortlisted rows

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def modality(self) -> str:
        return self.manifest["modality"]

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def check_queries(self, queries: TokenBatch, feature_source: str | None) -> None:
        """ShapeError / ConfigError naming both sides when the queries cannot be ranked against this
        gallery (including a query with NaN/inf features, which would silently drop out of the results)."""
        source = self.manifest["feature_source"]
        real = queries.tokens.float().sum(-1)[queries.mask]
        pooled_ok = queries.pooled is None or bool(torch.isfinite(queries.pooled).all())
        if not bool(torch.isfinite(real).all()) or not pooled_ok or not bool(queries.mask.any(1).all()):
            raise ShapeError("a query holds NaN/inf features or no real token: it cannot be ranked")
        if queries.dim != self.dim:
            raise ShapeError(
                f"query features have d={queries.dim} but gallery {self.folder} holds d={self.dim} "
                f"features (from {source!r})"
            )
        if feature_source is not None and feature_source != source:
            raise ConfigError(
                f"queries come from features {feature_source!r} but gallery {self.folder} was built from "
                f"{source!r}: their embedding spaces differ"
            )

    def query_vectors(self, queries: TokenBatch) -> np.ndarray:
        """The queries' global vectors as the gallery's were made (normalised when it was)."""
        vectors = global_vectors(queries).float()
        return (l2_normalize(vectors) if self.manifest["normalized"] else vectors).numpy()

    def query(self, queries: TokenBatch, top_k: int = 10, *, rerank: Aligner | None = None,
              shortlist: int | None = None, feature_source: str | None = None) -> SearchResult:  # fmt: skip
        """Rank the gallery for each query (items of the other modality).

        rerank None: the index's top_k. Otherwise each query's first-stage top-`shortlist` (default:
        a two_stage aligner's own shortlist length, else 100) is re-scored by `rerank` and the best
        top_k kept: a token-level aligner scores by its own score; a `two_stage` aligner by its
        mixed score of the exact global score and its local aligner's.
        """
        self.check_queries(queries, feature_source)
        check_positive_int("top_k", top_k)
        vectors = self.query_vectors(queries)
        if rerank is None:
            scores, ids = search(self.index, vectors, top_k)
            return SearchResult(ids, scores, scores)
        if isinstance(rerank, TwoStageAligner) and rerank.config.normalize != self.manifest["normalized"]:
            raise ConfigError(
                f"two_stage has normalize={rerank.config.normalize} but gallery {self.folder} holds "
                f"{'L2-normalised' if self.manifest['normalized'] else 'raw'} global vectors: its global "
                "scores would not be two_stage's"
            )
        shortlist = self._shortlist_length(rerank, shortlist, top_k)
        first_scores, ids = search(self.index, vectors, shortlist)
        final = self.rerank_scores(queries, vectors, ids, rerank)
        # Best first; ties by id; ids the first stage did not fill (-1) last.
        order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -final), axis=-1)[:, :top_k]
        return SearchResult(*(np.take_along_axis(a, order, 1) for a in (ids, final, first_scores)))

    def _shortlist_length(self, rerank: Aligner, shortlist: int | None, top_k: int) -> int:
        if shortlist is None:
            if isinstance(rerank, TwoStageAligner):
                shortlist = rerank.config.shortlist_length("i2t" if self.modality == "text" else "t2i")
            else:
                shortlist = 100
            shortlist = max(shortlist, top_k)
        check_int("shortlist", shortlist, low=top_k, note=f" (top_k={top_k})")
        return shortlist

    def rerank_scores(self, queries: TokenBatch, vectors: np.ndarray, ids: np.ndarray, rerank: Aligner) -> np.ndarray:
        """(nq, s) scores of each query's shortlisted items `ids` by `rerank` (-inf where id is -1).

        Only the shortlisted items' tokens are read from the memory map. Each query is scored
        against its own shortlist (one (1, s) row; the aligner contract makes these entries equal
        to `score_pairs` of the same pairs, which is what two_stage uses), never against the other
        queries' shortlists. Image queries against a caption gallery score through the prepared-
        gallery contract (`prepare_gallery` of the shortlist, then `score_prepared`): the shortlist
        is that query's caption gallery, so it is prepared once per query, and only the
        shortlisted captions are read and prepared (the memory-mapped store is never loaded whole).
        """
        local_aligner = rerank.local if isinstance(rerank, TwoStageAligner) else rerank
        final = np.full(ids.shape, -np.inf, dtype=np.float32)
        with torch.no_grad():
            for row, row_ids in enumerate(ids):
                found = row_ids[row_ids >= 0]
                if not len(found):
                    continue
                items = self.store.read(found, dtype=queries.tokens.dtype)
                query = queries[row]
                if self.modality == "text":
                    local = score_queries(local_aligner, query, prepare_gallery(local_aligner, items))[0]
                else:
                    local = local_aligner(items, query)[:, 0]
                if isinstance(rerank, TwoStageAligner):
                    # The exact global score of each pair, as two_stage's global matrix holds it.
                    glob = torch.from_numpy(np.ascontiguousarray(self.globals[found])) @ torch.from_numpy(vectors[row])
                    local = rerank.mix(glob, local)
                final[row, row_ids >= 0] = local.float().numpy()
        return final
