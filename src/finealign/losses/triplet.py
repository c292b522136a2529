"""Hinge triplet loss with a margin (VSE++, CHAN), both directions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from finealign.checks import check_choice, check_int, check_number
from finealign.losses.base import BatchShare, Loss, check_share, check_similarity, hinge_share, hinge_terms
from finealign.registry import LOSSES


@dataclass
class TripletConfig:
    margin: float = 0.2
    # Epochs (0-based, epoch < warmup_epochs) that sum the hinge over all negatives before
    # switching to the hardest negative: the hardest-only loss can collapse from a random start.
    warmup_epochs: int = 1
    reduction: str = "mean"  # mean | sum over positive pairs (VSE++ sums over the batch)
    # hardest: every negative during warm-up, then the hardest (VSE++); sum: every negative in every
    # epoch (VSE0) — the hardest-negative hinge can collapse the embeddings (docs/methods.md)
    negatives: str = "hardest"

    def __post_init__(self) -> None:
        check_number("margin", self.margin, low=0)
        check_int("warmup_epochs", self.warmup_epochs, low=0)
        check_choice("reduction", self.reduction, ("mean", "sum"))
        check_choice("negatives", self.negatives, ("hardest", "sum"))


@LOSSES.register("triplet")
class TripletLoss(Loss[TripletConfig]):
    """Bidirectional hinge triplet loss: all negatives during warm-up, then the hardest (VSE++)."""

    Config = TripletConfig

    @property
    def hardest(self) -> bool:
        return self.config.negatives == "hardest" and self.epoch >= self.config.warmup_epochs

    def forward(self, sim: Tensor, positives: Tensor, extras: Mapping[str, Tensor] | None = None) -> Tensor:
        check_similarity(sim, positives)
        cost = hinge_terms(sim.float(), positives, self.config.margin, self.hardest)
        return cost.mean() if self.config.reduction == "mean" else cost.sum()

    def share_loss(self, share: BatchShare) -> Tensor:
        """The hinge costs of the share's images (image→text) and captions (text→image), over the
        whole batch's count of positive pairs when averaging."""
        check_share(share)
        cost = hinge_share(share, share.i2t.float(), share.t2i.float(), self.config.margin, self.hardest)
        return cost / share.positives.sum() if self.config.reduction == "mean" else cost
