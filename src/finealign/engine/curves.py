"""Training curves beyond the loss: how far positives sit above the hardest negatives, and how
spread out the embeddings are. A hinge objective can reach a near-zero loss by collapsing every
image onto one point; these per-epoch means show it (RESULTS: the CHAN and TGDT presets), where
the loss alone looks like success.

Per batch: the mean score of the positive pairs, the mean over image queries of the hardest
negative caption's score, and each modality's spread = the mean distance of its L2-normalised
global vectors from their centroid (0: every item is one point; ~1: spread over the sphere).
An epoch's value is the mean over its batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from finealign.kernels.normalize import l2_normalize

CURVE_KEYS = ("positive_score", "hardest_negative_score", "image_spread", "text_spread")


def spread(vectors: Tensor) -> float:
    """Mean distance of the L2-normalised rows from their centroid."""
    unit = l2_normalize(vectors.detach().float())
    return float((unit - unit.mean(0)).norm(dim=1).mean())


def batch_curves(sim: Tensor, positives: Tensor, image_global: Tensor, text_global: Tensor) -> dict[str, float]:
    """This batch's point of every curve (sim: (images, captions) scores, positives: bool of the same shape)."""
    with torch.no_grad():
        scores = sim.detach().float()
        negatives = scores.masked_fill(positives, float("-inf"))
        has_negative = (~positives).any(1)
        hardest = negatives.amax(1)[has_negative]
        return {
            "positive_score": float(scores[positives].mean()),
            "hardest_negative_score": float(hardest.mean()) if len(hardest) else float("nan"),
            "image_spread": spread(image_global),
            "text_spread": spread(text_global),
        }


@dataclass
class EpochCurves:
    """Running means of `batch_curves` over one epoch."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CURVE_KEYS, 0.0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CURVE_KEYS, 0))

    def add(self, point: dict[str, float]) -> None:
        for key, value in point.items():
            if value == value:  # NaN (a batch without negatives) does not count
                self.sums[key] += value
                self.counts[key] += 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] if self.counts[k] else float("nan") for k in CURVE_KEYS}
