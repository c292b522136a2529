"""The optimiser: AdamW with separate parameter groups for backbones and for everything learned
from scratch (heads, aligner, loss temperature), and no weight decay on biases, norms, scales."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from finealign.config import TrainConfig
from finealign.errors import ConfigError


def _split_decay(params: Iterable[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return decay, no_decay


def build_optimizer(model: nn.Module, loss: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `model` and `loss` (frozen ones are left out)."""
    backbone = model.backbone_parameters()
    if cfg.freeze_backbone or cfg.backbone_lr == 0:
        for p in backbone:
            p.requires_grad_(False)
    backbone_ids = {id(p) for p in backbone}
    heads = [p for p in [*model.parameters(), *loss.parameters()] if id(p) not in backbone_ids]
    groups = []
    for name, params, lr in (("heads", heads, cfg.lr), ("backbone", backbone, cfg.backbone_lr)):
        decay, no_decay = _split_decay(params)
        if decay:
            groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": cfg.weight_decay})
        if no_decay:
            groups.append({"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen (train.freeze_backbone with no heads?)")
    return torch.optim.AdamW(groups)
