"""Evaluation: encode a split's images and captions once, score the whole gallery with the
aligner in chunks of images, and compute the retrieval metrics."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from finealign.data.base import RetrievalSplit
from finealign.engine.batching import to_device
from finealign.engine.metrics import fold_metrics, retrieval_metrics
from finealign.tokens import TokenBatch


def concat_token_batches(batches: Sequence[TokenBatch]) -> TokenBatch:
    """Concatenate batches along N, padding every batch to the longest token length."""
    length = max(b.tokens.shape[1] for b in batches)
    tokens, masks = [], []
    for b in batches:
        pad = length - b.tokens.shape[1]
        tokens.append(torch.nn.functional.pad(b.tokens, (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(b.mask, (0, pad), value=False))
    pooled = None if any(b.pooled is None for b in batches) else torch.cat([b.pooled for b in batches])
    return TokenBatch(torch.cat(tokens), torch.cat(masks), pooled)


def autocast_context(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def encode_all(
    encoder: Any, raw_items: Sequence[Any], *, batch_size: int, device: torch.device, amp: str = "none",
    progress: bool = False, desc: str = "encode",
) -> TokenBatch:
    """Encode every raw item with `encoder` (load → collate → forward) into one TokenBatch (fp32)."""
    out = []
    for start in tqdm(range(0, len(raw_items), batch_size), desc=desc, disable=not progress, leave=False):
        inputs = encoder.collate([encoder.load(raw_items[i]) for i in range(start, min(start + batch_size, len(raw_items)))])
        with autocast_context(device, amp):
            batch = encoder(to_device(inputs, device))
        out.append(batch.to(torch.float32))
    return concat_token_batches(out)


def subset(split: RetrievalSplit, max_items: int) -> tuple[list[Any], list[Any], Tensor]:
    """The raw images, captions and caption→image map of the first `max_items` images (0: all)."""
    n = split.num_items if not max_items else min(max_items, split.num_items)
    keep = (split.caption_item < n).nonzero().flatten().tolist()
    items = _LazyItems(split, n)
    captions = _LazyCaptions(split, keep)
    return items, captions, split.caption_item[keep].long()  # type: ignore[return-value]


class _LazyItems(Sequence):
    def __init__(self, split: RetrievalSplit, n: int):
        self.split, self.n = split, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        return self.split.raw_item(i)


class _LazyCaptions(Sequence):
    def __init__(self, split: RetrievalSplit, keep: list[int]):
        self.split, self.keep = split, keep

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, j):  # type: ignore[override]
        return self.split.captions[self.keep[j]]


def scores_by_rows(aligner: Any) -> bool:
    """True if scoring a block of images against all captions gives exactly those rows of the full
    matrix, so the gallery can be scored in chunks of images (with a progress bar).

    An aligner says so with a class attribute `row_separable = True/False`. Without one, only the
    base `Aligner.forward` (independent blocks) is trusted; an overridden `forward` may depend on
    the whole candidate set (a two-stage shortlist ranks each caption among ALL images), so it is
    called once on the whole gallery.
    """
    from finealign.aligners.base import Aligner

    flag = getattr(aligner, "row_separable", None)
    if flag is not None:
        return bool(flag)
    return isinstance(aligner, Aligner) and type(aligner).forward is Aligner.forward


@torch.no_grad()
def score_gallery(
    aligner: Any, visual: TokenBatch, text: TokenBatch, *, chunk_items: int, progress: bool = False,
    device: torch.device | None = None,
) -> tuple[Tensor, float]:
    """(N_img, N_cap) similarities on the CPU, and the wall time of scoring in milliseconds.

    Row-separable aligners (see `scores_by_rows`) are called on `chunk_items` images at a time
    against every caption; any other aligner is called once on the whole gallery.
    """
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    if not scores_by_rows(aligner):
        sim = aligner(visual, text).float().cpu()
    else:
        rows = []
        for i in tqdm(range(0, len(visual), chunk_items), desc="score", disable=not progress, leave=False):
            rows.append(aligner(visual[i : i + chunk_items], text).float().cpu())
        sim = torch.cat(rows)
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return sim, 1000.0 * (time.perf_counter() - start)


@torch.no_grad()
def scoring_peak_memory_mb(
    aligner: Any, visual: TokenBatch, text: TokenBatch, *, chunk_items: int, device: torch.device
) -> float:
    """Peak extra memory (MiB) of scoring the gallery, above the encoded features.

    Row-separable aligners hold one row chunk's working set at a time plus the growing output, so
    we measure scoring the first few images (one aligner block) against every caption and add the full fp32
    (N_img, N_cap) output; other aligners (two_stage) are measured on the whole gallery. Method:
    finealign.profiling.memory (CUDA allocator peak, or torch's CPU allocation log).
    """
    from finealign.profiling.memory import peak_memory

    if scores_by_rows(aligner):
        # A short slice is enough: the aligner's working set is bounded by its own block size
        # (chunk_visual × chunk_text items), and the profiler makes each scored row slow.
        rows = min(chunk_items, getattr(getattr(aligner, "config", None), "chunk_visual", 64), len(visual))
        first = peak_memory(lambda: aligner(visual[:rows], text), (), device)
        if first.peak_bytes is None:
            return float("nan")
        chunk_output = rows * len(text) * 4
        return (first.peak_bytes - chunk_output + len(visual) * len(text) * 4) / 2**20
    whole = peak_memory(lambda: aligner(visual, text), (), device)
    return whole.peak_mib


def evaluate(
    model: Any, split: RetrievalSplit, *, device: torch.device, batch_size: int = 256, chunk_items: int = 256,
    max_items: int = 0, coco_folds: int = 0, fold_size: int = 1000, amp: str = "none", progress: bool = False,
    measure_memory: bool = True,
) -> dict[str, float]:
    """Metrics of `model` on `split` (+ score_latency_ms, score_peak_mem_mb unless `measure_memory`
    is off, and `folds_*` averages when coco_folds>0)."""
    was_training = model.training
    model.eval()
    try:
        items, captions, caption_item = subset(split, max_items)
        visual = encode_all(model.vision, items, batch_size=batch_size, device=device, amp=amp, progress=progress, desc="images")
        text = encode_all(model.text, captions, batch_size=batch_size, device=device, amp=amp, progress=progress, desc="captions")
        with autocast_context(device, amp):
            sim, latency_ms = score_gallery(model.aligner, visual, text, chunk_items=chunk_items, progress=progress, device=device)
            # A profiled extra pass: worth it for the reported test metrics, not for every validation.
            score_mem = (
                scoring_peak_memory_mb(model.aligner, visual, text, chunk_items=chunk_items, device=device)
                if measure_memory
                else None
            )
    finally:
        model.train(was_training)
    metrics = retrieval_metrics(sim, caption_item)
    if coco_folds:
        metrics.update({f"folds_{k}": v for k, v in fold_metrics(sim, caption_item, coco_folds, fold_size).items()})
    metrics["score_latency_ms"] = latency_ms
    if score_mem is not None:
        metrics["score_peak_mem_mb"] = score_mem
    metrics["num_items"] = float(len(items))
    metrics["num_captions"] = float(len(captions))
    return metrics
