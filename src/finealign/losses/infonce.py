"""Symmetric InfoNCE (CLIP), with a learnable or fixed temperature and several positives per row."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from finealign.checks import check_number
from finealign.errors import ConfigError
from finealign.losses.base import BatchShare, Loss, check_share, check_similarity
from finealign.registry import LOSSES


@dataclass
class InfoNCEConfig:
    temperature: float = 0.07  # initial (learnable) or fixed τ; logits are sim / τ
    learnable: bool = True  # learn log(1/τ), as CLIP does
    max_scale: float = 100.0  # CLIP's clamp: 1/τ never exceeds this

    def __post_init__(self) -> None:
        check_number("temperature", self.temperature, low=0, strict=True)
        check_number("max_scale", self.max_scale, low=0, strict=True)
        if 1.0 / self.temperature > self.max_scale:
            raise ConfigError(
                f"temperature {self.temperature} gives a logit scale {1 / self.temperature:.1f} "
                f"above max_scale {self.max_scale}"
            )


def multi_positive_nce(logits: Tensor, positives: Tensor) -> Tensor:
    """Mean over rows that have a positive of  -1/|P_r| Σ_{p∈P_r} log softmax(logits[r])[p].

    With one positive per row this is exactly cross-entropy. With several (the captions of one
    image), each positive is a separate target and the row averages their losses (SupCon's
    "L_out" form), so every caption of the image is pulled up while the other images' captions
    are pushed down. Rows without a positive (pure negatives) contribute only as negatives.
    """
    return nce_rows(logits, positives).mean()


def nce_rows(logits: Tensor, positives: Tensor) -> Tensor:
    """The per-row terms of `multi_positive_nce`, for the rows that have a positive."""
    log_prob = torch.log_softmax(logits, dim=1)
    has_pos = positives.any(dim=1)
    return -(log_prob * positives).sum(dim=1)[has_pos] / positives.sum(dim=1)[has_pos]


@LOSSES.register("infonce")
class InfoNCELoss(Loss[InfoNCEConfig]):
    """Symmetric InfoNCE (CLIP) over the aligner's similarity matrix; multi-positive aware."""

    Config = InfoNCEConfig

    def __init__(self, config: InfoNCEConfig | None = None):
        super().__init__(config)
        log_scale = torch.tensor(math.log(1.0 / self.config.temperature))
        if self.config.learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def temperature(self) -> float:
        return float(1.0 / self.scale().detach())

    def scale(self) -> Tensor:
        return self.log_scale.clamp(max=math.log(self.config.max_scale)).exp()

    def forward(self, sim: Tensor, positives: Tensor, extras: Mapping[str, Tensor] | None = None) -> Tensor:
        check_similarity(sim, positives)
        logits = sim.float() * self.scale()
        return 0.5 * (multi_positive_nce(logits, positives) + multi_positive_nce(logits.T, positives.T))

    def share_loss(self, share: BatchShare) -> Tensor:
        """The share's rows' and columns' terms, each over the whole batch's count of rows / columns
        with a positive (so that the shares of a split batch add up to `forward`)."""
        check_share(share)
        scale = self.scale()
        rows = nce_rows(share.i2t.float() * scale, share.row_positives).sum() / share.positives.any(1).sum()
        cols = nce_rows(share.t2i.float().T * scale, share.col_positives).sum() / share.positives.any(0).sum()
        return 0.5 * (rows + cols)
