"""The loss contract.

A loss takes the (B_img, B_txt) similarity matrix of any aligner and a bool (B_img, B_txt)
`positives` matrix (True where image i and caption j belong together; an image may have several
captions in a batch) plus optional `extras` — global vectors/similarities for losses that need
them (`global_sim` (B_img, B_txt), `image_global` (B_img, d), `text_global` (B_txt, d)).
Losses that change with training progress (e.g. a hard-negative warm-up) read the epoch given
to `set_epoch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar, cast

import torch
from torch import Tensor, nn

from finealign.errors import ShapeError

#: The Config dataclass of a loss.
C = TypeVar("C")


class Loss(nn.Module, Generic[C]):
    """Base class of every registered loss. Subclasses (`class MyLoss(Loss[MyConfig])`) set
    `Config` and implement `forward`; the type parameter types `self.config`."""

    #: The dataclass the registry builds from keyword arguments (the subclass's `C`).
    Config: ClassVar[type[Any]]
    config: C

    def __init__(self, config: C | None = None):
        super().__init__()
        # cast: a subclass's `Config` is its `C` (a class attribute cannot be typed by a TypeVar).
        self.config = config if config is not None else cast(C, self.Config())
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss which (0-based) epoch is being trained."""
        self.epoch = int(epoch)

    def forward(self, sim: Tensor, positives: Tensor, extras: Mapping[str, Tensor] | None = None) -> Tensor:
        raise NotImplementedError


def check_similarity(sim: Tensor, positives: Tensor, name: str = "sim") -> None:
    """Raise ShapeError unless `sim` is a finite float matrix and `positives` a matching bool one
    with at least one positive pair."""
    if sim.dim() != 2 or not sim.is_floating_point():
        raise ShapeError(f"{name} must be a floating (B_img, B_txt) matrix, got {sim.dtype} {tuple(sim.shape)}")
    if positives.dtype != torch.bool:
        raise ShapeError(f"positives must be a bool matrix, got {positives.dtype}")
    if positives.shape != sim.shape:
        raise ShapeError(f"positives {tuple(positives.shape)} must match {name} {tuple(sim.shape)}")
    if not bool(positives.any()):
        raise ShapeError("positives has no True entry: the batch holds no matching image-caption pair")
    with torch.no_grad():
        if not bool(torch.isfinite(sim).all()):
            raise ShapeError(f"{name} holds NaN or inf")


def hinge_terms(sim: Tensor, positives: Tensor, margin: float, hardest: bool) -> Tensor:
    """Per-positive-pair hinge cost, both directions: (P,) for the P positive pairs.

    For a positive pair (i, j) with score s = sim[i, j]:
      image→text: [margin - s + sim[i, j']]_+ over captions j' that are not positives of image i,
      text→image: [margin - s + sim[i', j]]_+ over images i' that are not positives of caption j,
    summed over the negatives (VSE0) or only the largest one (VSE++ hardest negative).
    """
    rows, cols = positives.nonzero(as_tuple=True)
    pos = sim[rows, cols]  # (P,)
    neg_i2t = ~positives[rows]  # (P, B_txt): captions that are negatives of the pair's image
    neg_t2i = ~positives[:, cols].T  # (P, B_img): images that are negatives of the pair's caption
    cost_i2t = (margin - pos[:, None] + sim[rows]).clamp_min(0) * neg_i2t
    cost_t2i = (margin - pos[:, None] + sim[:, cols].T).clamp_min(0) * neg_t2i
    if hardest:
        return cost_i2t.amax(dim=1) + cost_t2i.amax(dim=1)
    return cost_i2t.sum(dim=1) + cost_t2i.sum(dim=1)
