"""Retrieval metrics from an (N_img, N_cap) similarity matrix.

Ranks are 1-based. Image→text: an image's rank is the rank of its best-scored caption, i.e. a hit
at k when ANY of its captions is in the top k. Text→image: each caption has one image.

Ties are counted pessimistically: a wrong candidate that scores exactly as high as the (best)
correct one is ranked ahead of it. So rank = 1 + #{wrong candidates with score >= the correct
score}; ties among an image's own captions do not matter. A degenerate scorer that gives every
pair the same score therefore gets the worst rank, never a perfect one.

Directional scores: `retrieval_metrics(sim, caption_item, t2i_sim=...)` ranks image queries by
`sim` and caption queries by `t2i_sim` (an aligner whose scores depend on the gallery, such as a
two-stage shortlist, gives each direction its own matrix).

R@k is a percentage; RSUM is the sum of the six R@{1,5,10}; medr/meanr are the median/mean rank
(the median of an even count may end in .5).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from finealign.errors import ShapeError

KS = (1, 5, 10)
#: the metrics a run is summed up by (printed after train / eval, logged per validation): R@K both
#: ways, then RSUM
HEADLINE = (*(f"{d}_r{k}" for d in ("i2t", "t2i") for k in KS), "rsum")
#: what every evaluation reports for a gallery (retrieval_metrics; with coco folds also as
#: `folds_<name>`): the names a protocol's `tune.metric` may take
GALLERY_METRICS = (
    *(f"{d}_{m}" for d in ("i2t", "t2i") for m in (*(f"r{k}" for k in KS), "medr", "meanr")),
    "rsum",
)


def _check(sim: Tensor, caption_item: Tensor) -> None:
    if sim.dim() != 2:
        raise ShapeError(f"similarity matrix must be (N_img, N_cap), got shape {tuple(sim.shape)}")
    if caption_item.shape != (sim.shape[1],):
        raise ShapeError(
            f"caption_item {tuple(caption_item.shape)} must have one entry per column of {tuple(sim.shape)}"
        )
    if len(caption_item) and (int(caption_item.min()) < 0 or int(caption_item.max()) >= sim.shape[0]):
        raise ShapeError(f"caption_item holds image indices outside [0, {sim.shape[0]})")
    if not bool(torch.isfinite(sim).all()):
        raise ShapeError("similarity matrix holds NaN or inf")
    counts = torch.bincount(caption_item.long(), minlength=sim.shape[0])
    if bool((counts == 0).any()):
        raise ShapeError(f"image(s) {(counts == 0).nonzero().flatten()[:5].tolist()} have no caption")


def i2t_ranks(sim: Tensor, caption_item: Tensor, chunk: int = 1024) -> Tensor:
    """(N_img,) rank of each image's best caption among all captions (ties pessimistic)."""
    ranks = []
    caption_item = caption_item.to(sim.device).long()
    for start in range(0, sim.shape[0], chunk):
        block = sim[start : start + chunk]
        rows = torch.arange(start, start + len(block), device=sim.device)
        positive = rows[:, None] == caption_item[None, :]
        best = block.masked_fill(~positive, float("-inf")).amax(dim=1)
        ahead = (block >= best[:, None]) & ~positive
        ranks.append(1 + ahead.sum(dim=1))
    return torch.cat(ranks).cpu()


def t2i_ranks(sim: Tensor, caption_item: Tensor, chunk: int = 4096) -> Tensor:
    """(N_cap,) rank of each caption's image among all images (ties pessimistic)."""
    ranks = []
    caption_item = caption_item.to(sim.device).long()
    images = torch.arange(sim.shape[0], device=sim.device)
    for start in range(0, sim.shape[1], chunk):
        block = sim[:, start : start + chunk]  # (N_img, c)
        owner = caption_item[start : start + chunk]
        correct = block.gather(0, owner[None, :])  # (1, c)
        ahead = (block >= correct) & (images[:, None] != owner[None, :])
        ranks.append(1 + ahead.sum(dim=0))
    return torch.cat(ranks).cpu()


def recall_from_ranks(ranks: Tensor, prefix: str) -> dict[str, float]:
    r = ranks.double()
    out = {f"{prefix}_r{k}": float(100.0 * (r <= k).double().mean()) for k in KS}
    out[f"{prefix}_medr"] = float(np.median(r.numpy()))
    out[f"{prefix}_meanr"] = float(r.mean())
    return out


def retrieval_metrics(sim: Tensor, caption_item: Tensor, t2i_sim: Tensor | None = None) -> dict[str, float]:
    """R@1/5/10 both ways, RSUM, median and mean rank for one gallery.

    Image queries are ranked by `sim`, caption queries by `t2i_sim` (default: `sim` too)."""
    _check(sim, caption_item)
    if t2i_sim is None:
        t2i_sim = sim
    elif t2i_sim is not sim:
        if t2i_sim.shape != sim.shape:
            raise ShapeError(f"t2i_sim {tuple(t2i_sim.shape)} must have the shape of sim {tuple(sim.shape)}")
        _check(t2i_sim, caption_item)
    out = {
        **recall_from_ranks(i2t_ranks(sim, caption_item), "i2t"),
        **recall_from_ranks(t2i_ranks(t2i_sim, caption_item), "t2i"),
    }
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in KS)
    return out


def query_ranks(sim: Tensor, caption_item: Tensor, t2i_sim: Tensor | None = None) -> dict[str, Tensor]:
    """Every query's rank: {"i2t": (N_img,), "t2i": (N_cap,)} (what paired bootstraps resample)."""
    _check(sim, caption_item)
    return {"i2t": i2t_ranks(sim, caption_item), "t2i": t2i_ranks(sim if t2i_sim is None else t2i_sim, caption_item)}


def fold_slices(
    caption_item: Tensor, folds: int, fold_size: int, *, visual_count: int
) -> list[tuple[int, int, Tensor]]:
    """(first image, end image, caption columns) of each of `folds` consecutive folds of
    `fold_size` images (MS-COCO 1K: 5 folds of 1,000 test images, each with its own captions)."""
    if folds * fold_size > visual_count:
        raise ShapeError(f"{folds} folds of {fold_size} images need {folds * fold_size} images, got {visual_count}")
    caption_item = caption_item.long()
    out = []
    for f in range(folds):
        lo, hi = f * fold_size, (f + 1) * fold_size
        out.append((lo, hi, ((caption_item >= lo) & (caption_item < hi)).nonzero().flatten()))
    return out


def fold_metrics(sim: Tensor, caption_item: Tensor, folds: int, fold_size: int) -> dict[str, float]:
    """Average of `retrieval_metrics` over folds sliced from one gallery-independent matrix. (A
    gallery-dependent aligner must be scored on each fold alone: engine.evaluate does that.)"""
    caption_item = caption_item.long()
    return mean_metrics(
        [
            retrieval_metrics(sim[lo:hi][:, columns.to(sim.device)], caption_item[columns] - lo)
            for lo, hi, columns in fold_slices(caption_item, folds, fold_size, visual_count=sim.shape[0])
        ]
    )


def mean_metrics(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of several folds' metric dicts."""
    return {key: float(np.mean([m[key] for m in per_fold])) for key in per_fold[0]}
