"""Pieces every concrete encoder shares: the projection head, freezing, and weight identities."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finealign.checks import check_int
from finealign.encoders.base import C, Encoder


def check_embed_dim(embed_dim: Any) -> None:
    """`embed_dim` is the projected width; 0 means "no projection, raw backbone features"."""
    check_int("embed_dim", embed_dim, low=0, note=" (0 = raw features)")


def projection(in_dim: int, embed_dim: int) -> nn.Module:
    """Linear map into the joint space, or the identity when embed_dim is 0."""
    return nn.Linear(in_dim, embed_dim) if embed_dim > 0 else nn.Identity()


def output_dim(in_dim: int, embed_dim: int) -> int:
    return embed_dim if embed_dim > 0 else in_dim


def freeze(module: nn.Module) -> None:
    """Stop gradients and keep the module in eval mode (BatchNorm statistics stay fixed)."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


def file_identity(path: str | Path) -> dict[str, Any]:
    """Path, size and mtime of a weights file: enough to notice that a checkpoint changed."""
    path = Path(path).resolve()
    stat = os.stat(path)
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class BackboneEncoder(Encoder[C]):
    """An encoder built around one pre-trained `backbone` module plus a learned projection.

    Subclasses assign `self.backbone` and call `self.set_frozen(...)`. A frozen backbone stays in
    eval mode even when the encoder is put in train mode, and runs without building a graph.
    """

    backbone: nn.Module
    frozen: bool = False

    def set_frozen(self, frozen: bool) -> None:
        """Freeze the backbone (no gradients, eval mode), or let it train again."""
        self.frozen = bool(frozen)
        if self.frozen:
            freeze(self.backbone)
            for p in self.backbone_parameters():
                p.requires_grad_(False)
        else:
            for p in self.backbone_parameters():
                p.requires_grad_(True)
            self.backbone.train(self.training)

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        """Turn activation recomputation on in the backbone; False when it has no such switch."""
        backbone: Any = self.backbone  # duck-typed: whichever library's switch it has
        for module in (backbone, getattr(backbone, "transformer", None)):
            if module is None:
                continue
            if hasattr(module, "set_grad_checkpointing"):  # timm, open_clip
                module.set_grad_checkpointing(enable)
                return True
            if hasattr(module, "gradient_checkpointing_enable"):  # transformers
                module.gradient_checkpointing_enable() if enable else module.gradient_checkpointing_disable()
                return True
            if hasattr(module, "grad_checkpointing"):  # open_clip's text transformer
                module.grad_checkpointing = enable
                return True
        return False

    def train(self, mode: bool = True) -> BackboneEncoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def backbone_grad_context(self):
        """no_grad for a frozen backbone (saves activation memory), a no-op otherwise."""
        return torch.no_grad() if self.frozen else contextlib.nullcontext()

    def weights_identity(self) -> dict[str, Any]:
        """What identifies the loaded weights (files, hub names); feature caches key on it."""
        return {}
