"""Evaluation: encode a split's images and captions once, score the whole gallery with the
aligner in chunks of images, and compute the retrieval metrics."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from finealign.aligners.base import prepare_gallery, score_queries
from finealign.config import EvalConfig
from finealign.data.base import RetrievalSplit
from finealign.encoders.batches import autocast_context, encoded_batches
from finealign.engine.distributed import SINGLE, World, broadcast_object, gather_rows, gather_token_batch, shard_range
from finealign.engine.metrics import fold_slices, mean_metrics, query_ranks, retrieval_metrics
from finealign.progress import bar as progress_bar
from finealign.resources import check_memory
from finealign.tokens import TokenBatch


def concat_token_batches(batches: Sequence[TokenBatch]) -> TokenBatch:
    """Concatenate batches along N, padding every batch to the longest token length."""
    length = max(b.tokens.shape[1] for b in batches)
    tokens, masks = [], []
    for b in batches:
        pad = length - b.tokens.shape[1]
        tokens.append(torch.nn.functional.pad(b.tokens, (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(b.mask, (0, pad), value=False))
    given = [b.pooled for b in batches if b.pooled is not None]
    pooled = torch.cat(given) if len(given) == len(batches) else None
    return TokenBatch(torch.cat(tokens), torch.cat(masks), pooled)


def encode_all(
    encoder: Any,
    raw_items: Sequence[Any],
    *,
    batch_size: int,
    device: torch.device,
    amp: str = "none",
    progress: bool = False,
    desc: str = "encode",
) -> TokenBatch:
    """Encode every raw item with `encoder` into one TokenBatch (fp32), by the shared loop."""
    batches = encoded_batches(encoder, len(raw_items), raw_items.__getitem__, batch_size=batch_size, device=device,
                              amp=amp, progress=progress, desc=desc)  # fmt: skip
    return concat_token_batches([b.to(torch.float32) for b in batches])


def subset(split: RetrievalSplit, max_items: int) -> tuple[Sequence[Any], Sequence[Any], Tensor]:
    """The raw images, captions and caption→image map of the first `max_items` images (0: all)."""
    n = split.num_items if not max_items else min(max_items, split.num_items)
    keep = (split.caption_item < n).nonzero().flatten().tolist()
    items = _LazyItems(split, n)
    captions = _LazyCaptions(split, keep)
    return items, captions, split.caption_item[keep].long()


class _LazyItems(Sequence):
    def __init__(self, split: RetrievalSplit, n: int):
        self.split, self.n = split, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return self.split.raw_item(i)


class _Slice(Sequence):
    """items[lo:hi] of a lazy sequence, without loading the rest."""

    def __init__(self, items: Sequence[Any], lo: int, hi: int):
        self.items, self.lo, self.hi = items, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.items[self.lo + i]


def encode_sharded(
    encoder: Any,
    raw_items: Sequence[Any],
    world: World,
    *,
    batch_size: int,
    device: torch.device,
    amp: str = "none",
    progress: bool = False,
    desc: str = "encode",
) -> TokenBatch:
    """encode_all, each rank encoding a contiguous share of the items; every rank gets all of them."""
    if not world.distributed:
        return encode_all(
            encoder, raw_items, batch_size=batch_size, device=device, amp=amp, progress=progress, desc=desc
        )
    lo, hi = shard_range(len(raw_items), world)
    # A rank without a share (fewer items than ranks) still encodes one item, for the feature
    # width and dtype, and contributes none.
    start = min(lo, len(raw_items) - 1)
    own = encode_all(encoder, _Slice(raw_items, start, max(hi, start + 1)), batch_size=batch_size, device=device,
                     amp=amp, progress=progress, desc=desc)[: hi - lo]  # fmt: skip
    return gather_token_batch(own, world)


class _LazyCaptions(Sequence):
    def __init__(self, split: RetrievalSplit, keep: list[int]):
        self.split, self.keep = split, keep

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, j):
        return self.split.captions[self.keep[j]]


def gallery_dependent(aligner: Any) -> bool:
    """True if the aligner declares that a pair's score depends on the rest of the gallery
    (`Aligner.gallery_dependent`): its matrix must then be scored per query direction and on each
    sub-gallery as a whole, never in row chunks or slices of a larger gallery."""
    return bool(getattr(aligner, "gallery_dependent", False))


@dataclass
class GalleryScores:
    """A gallery's scores as each query direction ranks them, on the CPU.

    i2t: (N_img, N_cap), row i = what image query i ranks captions by;
    t2i: (N_img, N_cap), column j = what caption query j ranks images by.
    The same tensor for gallery-independent aligners. latency_ms: wall time of scoring every query
    against the prepared caption gallery; prepare_ms: wall time of preparing it (once).
    """

    i2t: Tensor
    t2i: Tensor
    latency_ms: float
    prepare_ms: float = 0.0


@torch.no_grad()
def score_gallery(
    aligner: Any,
    visual: TokenBatch,
    text: TokenBatch,
    *,
    chunk_items: int,
    progress: bool = False,
    device: torch.device | None = None,
    world: World = SINGLE,
) -> GalleryScores:
    """Score the whole gallery for both query directions.

    The caption gallery is prepared once (`Aligner.prepare_gallery`, timed on its own). Gallery-
    independent aligners then score `chunk_items` images at a time against it (rows of one matrix
    serve both directions); gallery-dependent ones (two_stage) are asked once per direction for the
    whole gallery (`query_scores_prepared`). With several ranks, each scores a contiguous share of
    the image rows and every rank receives the whole matrix (gallery-dependent aligners: every rank
    scores the whole gallery).
    """
    _synchronize(device)
    start = time.perf_counter()
    gallery = prepare_gallery(aligner, text)
    _synchronize(device)
    prepared = time.perf_counter()
    if gallery_dependent(aligner):
        i2t = score_queries(aligner, visual, gallery, "i2t").float().cpu()
        t2i = score_queries(aligner, visual, gallery, "t2i").float().cpu()
    else:
        lo, hi = shard_range(len(visual), world)
        rows = [torch.empty(0, len(text))]
        for i in progress_bar(range(lo, hi, chunk_items), progress=progress, desc="score", leave=False):
            rows.append(score_queries(aligner, visual[i : min(i + chunk_items, hi)], gallery).float().cpu())
        i2t = t2i = torch.cat(rows)
        if world.distributed:  # through the features' device: nccl gathers CUDA tensors only
            i2t = t2i = gather_rows(i2t.to(visual.tokens.device), world).cpu()
    _synchronize(device)
    done = time.perf_counter()
    return GalleryScores(i2t, t2i, 1000.0 * (done - prepared), 1000.0 * (prepared - start))


def _synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def check_scoring_fits(aligner: Any, n_img: int, n_cap: int, *, chunk_items: int, device: torch.device,
                       tokens: tuple[TokenBatch, TokenBatch] | None = None) -> None:  # fmt: skip
    """ResourceError before scoring a gallery that cannot fit (a lower bound from the shapes): the
    (N_img, N_cap) fp32 scores are kept on the CPU (one matrix per query direction for a
    gallery-dependent aligner), one row chunk's scores are made on `device`, and — once the encoded
    `tokens` are there — an aligner scoring token blocks on the CPU holds the token similarities of
    its first block: the first chunk_visual images × the chunk_text shortest captions."""
    from finealign.aligners.base import Aligner

    matrix = n_img * n_cap * 4
    parts = {f"score matrix {n_img}×{n_cap}": matrix * (2 if gallery_dependent(aligner) else 1)}
    on_device = {f"one chunk's scores {min(chunk_items, n_img)}×{n_cap}": min(chunk_items, n_img) * n_cap * 4}
    config = getattr(aligner, "config", None)
    if tokens is not None and device.type == "cpu" and type(aligner).forward is Aligner.forward and config:
        cv, ct = min(config.chunk_visual, n_img, chunk_items), min(config.chunk_text, n_cap)
        lv = int(tokens[0].mask[:cv].sum(1).max()) if cv else 0
        lt = int(tokens[1].mask.sum(1).sort().values[ct - 1]) if ct else 0
        # 2 bytes: bf16 under autocast is the least it can take
        on_device[f"a token block {cv}×{ct}×{lv}×{lt}"] = cv * ct * lv * lt * 2
    advice = "evaluate fewer items (eval.max_items, eval.coco_folds) or lower eval.chunk_items"
    if device.type == "cpu":
        check_memory("scoring the gallery", {**parts, **on_device}, "cpu", advice)
    else:
        check_memory("scoring the gallery", parts, "cpu", advice)
        check_memory("scoring the gallery", on_device, device, advice)


def gallery_metrics(scores: GalleryScores, caption_item: Tensor) -> dict[str, float]:
    """Retrieval metrics with each direction ranked from its own matrix."""
    return retrieval_metrics(scores.i2t, caption_item, t2i_sim=scores.t2i)


def fold_gallery_metrics(
    aligner: Any,
    scores: GalleryScores,
    visual: TokenBatch,
    text: TokenBatch,
    caption_item: Tensor,
    folds: int,
    fold_size: int,
    *,
    chunk_items: int,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Average metrics over consecutive folds of `fold_size` images (MS-COCO 1K: 5 × 1,000).

    A gallery-independent aligner's fold matrix is a slice of the full one. A gallery-dependent
    aligner is re-scored on each fold's images and captions alone: its full-gallery shortlists
    span all 5K images, so a slice would rank a fold's queries by candidates from other folds.
    """
    caption_item = caption_item.long()
    per_fold = []
    for lo, hi, columns in fold_slices(caption_item, folds, fold_size, visual_count=len(visual)):
        if gallery_dependent(aligner):
            fold = score_gallery(aligner, visual[lo:hi], text[columns], chunk_items=chunk_items, device=device)
        else:
            fold = GalleryScores(scores.i2t[lo:hi][:, columns], scores.t2i[lo:hi][:, columns], 0.0)
        per_fold.append(gallery_metrics(fold, caption_item[columns] - lo))
    return mean_metrics(per_fold)


@torch.no_grad()
def scoring_peak_memory_mb(
    aligner: Any, visual: TokenBatch, text: TokenBatch, *, chunk_items: int, device: torch.device
) -> float:
    """Peak extra memory (MiB) of scoring the gallery, above the encoded features.

    Gallery-independent aligners hold one row chunk's working set at a time plus the growing output,
    so we measure scoring the first few images (one aligner block) against every caption and add the
    full fp32 (N_img, N_cap) output; gallery-dependent ones (two_stage) are measured scoring one
    query direction on the whole gallery (the directions run one after the other). Method:
    finealign.profiling.memory (CUDA allocator peak, or torch's CPU allocation log).
    """
    from finealign.profiling.memory import peak_memory

    if not gallery_dependent(aligner):
        # A short slice is enough: the aligner's working set is bounded by its own block size
        # (chunk_visual × chunk_text items), and the profiler makes each scored row slow.
        rows = min(chunk_items, getattr(getattr(aligner, "config", None), "chunk_visual", 64), len(visual))
        first = peak_memory(lambda: aligner(visual[:rows], text), (), device)
        if first.peak_bytes is None:
            return float("nan")
        chunk_output = rows * len(text) * 4
        return (first.peak_bytes - chunk_output + len(visual) * len(text) * 4) / 2**20
    whole = peak_memory(lambda: aligner.query_scores(visual, text, "i2t"), (), device)
    return whole.peak_mib


def warn_if_unconverged(solver: dict[str, float]) -> None:
    """Say so when an iterative aligner stopped at its iteration cap: its scores are a truncated
    solver's, not the method's (tables name it, e.g. "tokenflow (3 it., marginal err 0.46)")."""
    if solver.get("converged") == 0.0:
        warnings.warn(
            f"the aligner stopped at its iteration cap ({solver.get('iterations', math.nan):.0f} iterations) "
            f"with marginal error {solver.get('marginal_error', math.nan):.3g} above its tolerance: these "
            "scores come from a truncated solver (raise `iterations` or `epsilon`)",
            RuntimeWarning,
            stacklevel=3,
        )


def evaluate(
    model: Any,
    split: RetrievalSplit,
    options: EvalConfig,
    *,
    device: torch.device,
    amp: str = "none",
    measure_memory: bool = True,
    ranks: dict[str, Any] | None = None,
    world: World = SINGLE,
) -> dict[str, float]:
    """Metrics of `model` on `split` scored as `options` say (an `EvalConfig`, checked where it was
    built: batch_size, chunk_items, max_items, coco_folds/fold_size, progress, cost_repeats/cost_rows,
    threads; `split` and `save_ranks` are its caller's business), + score_latency_ms and
    score_prepare_ms — scoring every query against the caption gallery, and preparing that gallery
    once —, score_peak_mem_mb unless `measure_memory` is off, and `folds_*` averages when coco_folds>0.

    cost_repeats >= 5 adds the scoring cost as users meet it — preparation, single-query latency
    and throughput at a batch of `cost_rows` queries — with its spread and its ratios to reference
    operations timed alongside (profiling.scoring_cost); threads > 0 pins torch's thread count for
    the whole evaluation. A dict passed as `ranks` receives every query's rank ("i2t", "t2i") and
    "caption_item" (for paired bootstraps over queries). With several ranks (`world`), the ranks
    share the encoding and the scoring and all return rank 0's metrics; the scoring memory and
    cost are measured on rank 0 alone."""
    from finealign.profiling.device import pinned_threads

    with pinned_threads(options.threads or None):
        chunk_items = options.chunk_items
        progress = options.progress and world.is_main
        cost_repeats = options.cost_repeats if world.is_main else 0
        measure_memory = measure_memory and world.is_main
        was_training = model.training
        model.eval()
        try:
            items, captions, caption_item = subset(split, options.max_items)
            check_scoring_fits(model.aligner, len(items), len(captions), chunk_items=chunk_items, device=device)
            encode: dict[str, Any] = dict(batch_size=options.batch_size, device=device, amp=amp, progress=progress)
            visual = encode_sharded(model.vision, items, world, **encode, desc="images")
            text = encode_sharded(model.text, captions, world, **encode, desc="captions")
            check_scoring_fits(model.aligner, len(items), len(captions), chunk_items=chunk_items, device=device,
                               tokens=(visual, text))  # fmt: skip
            with autocast_context(device, amp):
                getattr(model.aligner, "reset_diagnostics", lambda: None)()
                scores = score_gallery(model.aligner, visual, text, chunk_items=chunk_items, progress=progress, device=device,
                                       world=world)  # fmt: skip
                solver: dict[str, float] = getattr(
                    model.aligner, "diagnostics", dict
                )()  # read before the memory pass scores again
                # A profiled extra pass: worth it for the reported test metrics, not for every validation.
                score_mem = (
                    scoring_peak_memory_mb(model.aligner, visual, text, chunk_items=chunk_items, device=device)
                    if measure_memory
                    else None
                )
                metrics = gallery_metrics(scores, caption_item)
                if ranks is not None:
                    ranks.update(query_ranks(scores.i2t, caption_item, scores.t2i), caption_item=caption_item.clone())
                cost = {}
                if cost_repeats:
                    from finealign.profiling.scoring_cost import scoring_cost

                    cost = scoring_cost(
                        model.aligner, visual, text, rows=options.cost_rows, repeats=cost_repeats, device=device
                    )
                if options.coco_folds:
                    folds = fold_gallery_metrics(
                        model.aligner,
                        scores,
                        visual,
                        text,
                        caption_item,
                        options.coco_folds,
                        options.fold_size,
                        chunk_items=chunk_items,
                        device=device,
                    )
                    metrics.update({f"folds_{k}": v for k, v in folds.items()})
        finally:
            model.train(was_training)
        metrics["score_latency_ms"] = scores.latency_ms
        metrics["score_prepare_ms"] = scores.prepare_ms
        metrics.update(cost)
        metrics.update({f"aligner_{key}": value for key, value in solver.items()})
        warn_if_unconverged(solver)
        if score_mem is not None:
            metrics["score_peak_mem_mb"] = score_mem
        metrics["num_items"] = float(len(items))
        metrics["num_captions"] = float(len(captions))
        return broadcast_object(metrics, world)
