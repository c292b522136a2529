"""The loss contract.

A loss takes the (B_img, B_txt) similarity matrix of any aligner and a bool (B_img, B_txt)
`positives` matrix (True where image i and caption j belong together; an image may have several
captions in a batch) plus optional `extras` — global vectors/similarities for losses that need
them (`global_sim` (B_img, B_txt), `image_global` (B_img, d), `text_global` (B_txt, d)).
Losses that change with training progress (e.g. a hard-negative warm-up) read the epoch given
to `set_epoch`.

A loss may also implement `share_loss(share: BatchShare)`: its part of the loss computed from one
share of the batch — some images scored against every caption, every image scored against some
captions — such that the parts of shares that split the images and the captions among them add up
to `forward` on the whole matrix. Distributed training then lets each rank score only its own
queries against the global batch (B_local × B_global, as open_clip's `local_loss`) instead of
every rank scoring the whole B_global × B_global matrix (engine/distributed.py). A loss without it
is trained on the whole matrix on every rank (correct, only slower at scale).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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


def one_way_hinge(scores: Tensor, positives: Tensor, margin: float, hardest: bool) -> Tensor:
    """Per positive pair, with the rows as queries: (P,) for the P positive pairs in row-major
    order. For a pair (r, p) with score s = scores[r, p]: [margin - s + scores[r, n]]_+ over the
    columns n that are not positives of row r, summed (VSE0) or only the largest (VSE++)."""
    rows, cols = positives.nonzero(as_tuple=True)
    pos = scores[rows, cols]  # (P,)
    cost = (margin - pos[:, None] + scores[rows]).clamp_min(0) * ~positives[rows]
    return cost.amax(dim=1) if hardest else cost.sum(dim=1)


def hinge_terms(sim: Tensor, positives: Tensor, margin: float, hardest: bool) -> Tensor:
    """Per-positive-pair hinge cost, both directions: (P,) for the P positive pairs (row-major).

    For a positive pair (i, j) with score s = sim[i, j]:
      image→text: [margin - s + sim[i, j']]_+ over captions j' that are not positives of image i,
      text→image: [margin - s + sim[i', j]]_+ over images i' that are not positives of caption j,
    summed over the negatives (VSE0) or only the largest one (VSE++ hardest negative).
    """
    i2t = one_way_hinge(sim, positives, margin, hardest)
    t2i = one_way_hinge(sim.T, positives.T, margin, hardest)  # pairs in column-major order
    cols, rows = positives.T.nonzero(as_tuple=True)
    return i2t + t2i[(rows * positives.shape[1] + cols).argsort()]


@dataclass(frozen=True)
class BatchShare:
    """One share of a batch: the images `image_rows` scored against every caption (`i2t`) and every
    image scored against the captions `text_cols` (`t2i`), with the whole batch's positives and
    extras (global vectors: (B_img, d), (B_txt, d)). See `share_loss` in the module docstring."""

    i2t: Tensor  # (n_img, B_txt) = sim[image_rows]
    t2i: Tensor  # (B_img, n_txt) = sim[:, text_cols]
    image_rows: Tensor  # (n_img,) long: this share's images in the batch
    text_cols: Tensor  # (n_txt,) long: this share's captions
    positives: Tensor  # (B_img, B_txt) bool
    extras: Mapping[str, Tensor] = field(default_factory=dict)

    @property
    def row_positives(self) -> Tensor:
        return self.positives[self.image_rows]  # (n_img, B_txt)

    @property
    def col_positives(self) -> Tensor:
        return self.positives[:, self.text_cols].T  # (n_txt, B_img): the captions as rows


def check_share(share: BatchShare) -> None:
    """Raise ShapeError unless the share's blocks are finite float matrices that fit its rows,
    columns and the batch's positives (which must hold a pair; the share's own rows need not)."""
    if share.positives.dim() != 2:
        raise ShapeError(f"positives must be a (B_img, B_txt) matrix, got {tuple(share.positives.shape)}")
    n_img, n_txt = share.positives.shape
    for name, block, shape in (("share.i2t", share.i2t, (len(share.image_rows), n_txt)),
                               ("share.t2i", share.t2i, (n_img, len(share.text_cols)))):  # fmt: skip
        if tuple(block.shape) != shape:
            what = "(n_img, B_txt)" if name == "share.i2t" else "(B_img, n_txt)"
            raise ShapeError(f"{name} {tuple(block.shape)} must be {what} = {shape}")
        if not block.is_floating_point():
            raise ShapeError(f"{name} must be a floating matrix, got {block.dtype}")
        if block.numel() and not bool(torch.isfinite(block.detach()).all()):
            raise ShapeError(f"{name} holds NaN or inf")
    check_similarity(share.positives.float(), share.positives)  # bool, with a pair somewhere


def hinge_share(share: BatchShare, i2t: Tensor, t2i: Tensor, margin: float, hardest: bool) -> Tensor:
    """The share's part of Σ over positive pairs of `hinge_terms`: the image→text costs of pairs
    whose image is in the share plus the text→image costs of pairs whose caption is."""
    rows = one_way_hinge(i2t, share.row_positives, margin, hardest)
    cols = one_way_hinge(t2i.T, share.col_positives, margin, hardest)
    return rows.sum() + cols.sum()
