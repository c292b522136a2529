"""The optimiser: AdamW with one parameter group per kind — backbone (optionally one per block,
for layer-wise lr decay), heads (projections, small learned towers), aligner, temperature (the
loss's own parameters) — each with its learning rate, and no weight decay on biases, norms, scales.
Plus the backbone schedule (frozen for the first N epochs, then trained) and gradient checkpointing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from finealign.config import TrainConfig
from finealign.errors import ConfigError

if TYPE_CHECKING:
    from finealign.engine.model import RetrievalModel

#: the block index in a parameter name: timm `blocks.3.`, HF `layer.3.`, open_clip `resblocks.3.`
_BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers|layer|resblocks|stages)\.(\d+)\.")
_EMBEDDING = re.compile(r"embed|cls_token|pos_|positional|patch|conv1|stem", re.IGNORECASE)


def _split_decay(params: Iterable[nn.Parameter], include_frozen: bool) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in params:
        if p.requires_grad or include_frozen:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return decay, no_decay


def layer_scales(named: list[tuple[str, nn.Parameter]], decay: float) -> list[float]:
    """lr multiplier per backbone parameter: decay^(L − block) inside block `block` of L+1 blocks,
    decay^(L + 1) for embeddings before the first block, 1 for what follows the last (final norms)."""
    blocks = [int(m.group(1)) if (m := _BLOCK.search(name)) else None for name, _ in named]
    top = max((b for b in blocks if b is not None), default=None)
    if decay == 1.0 or top is None:
        return [1.0] * len(named)
    return [
        decay ** (top - b) if b is not None else (decay ** (top + 1) if _EMBEDDING.search(name) else 1.0)
        for (name, _), b in zip(named, blocks, strict=True)
    ]


def _per_encoder(named: list[tuple[str, nn.Parameter]]) -> list[list[tuple[str, nn.Parameter]]]:
    """Backbone parameters split by encoder (`vision.…`, `text.…`): each tower's depth counts from
    its own top block (a 19-module MobileNetV2 and a 6-layer MiniLM both end at scale 1)."""
    towers: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, p in named:
        towers.setdefault(name.split(".", 1)[0], []).append((name, p))
    return list(towers.values())


def freeze_backbones(model: RetrievalModel) -> None:
    """`train.freeze_backbone` / `backbone_lr: 0`: every backbone fixed — no gradients, and eval
    mode where the encoder can hold it (BatchNorm statistics and dropout as when frozen by config)."""
    for encoder in (model.vision, model.text):
        set_frozen = getattr(encoder, "set_frozen", None)  # a BackboneEncoder's; other encoders: gradients only
        if callable(set_frozen):
            set_frozen(True)
    for p in model.backbone_parameters():
        p.requires_grad_(False)


def build_optimizer(model: RetrievalModel, loss: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `model` and `loss` (frozen ones are left out, except a
    backbone scheduled to unfreeze: its groups exist from the start and fill with gradients later)."""
    backbone = model.backbone_parameters()
    if cfg.freeze_backbone or cfg.backbone_lr == 0:
        freeze_backbones(model)
    scheduled = cfg.unfreeze_backbone_epoch > 0 and not cfg.freeze_backbone and cfg.backbone_lr > 0
    backbone_ids = {id(p) for p in backbone}
    aligner = list(getattr(model, "aligner", nn.Module()).parameters())
    aligner_ids = {id(p) for p in aligner}
    temperature = list(loss.parameters())
    heads = [p for p in model.parameters() if id(p) not in backbone_ids and id(p) not in aligner_ids]
    groups: list[dict] = []

    def add(name: str, params: list[nn.Parameter], lr: float, weight_decay: float, include_frozen: bool = False):
        decay, no_decay = _split_decay(params, include_frozen)
        if decay:
            groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": weight_decay})
        if no_decay:
            groups.append({"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})

    add("heads", heads, cfg.lr, cfg.weight_decay)
    add("aligner", aligner, cfg.lr if cfg.aligner_lr is None else cfg.aligner_lr, cfg.weight_decay)
    add("temperature", temperature, cfg.lr if cfg.temperature_lr is None else cfg.temperature_lr, 0.0)
    backbone_wd = cfg.weight_decay if cfg.backbone_weight_decay is None else cfg.backbone_weight_decay
    by_scale: dict[float, list[nn.Parameter]] = {}
    for named in _per_encoder([(n, p) for n, p in model.named_parameters() if id(p) in backbone_ids]):
        for (_, p), scale in zip(named, layer_scales(named, cfg.layer_decay), strict=True):
            by_scale.setdefault(scale, []).append(p)
    for scale, params in sorted(by_scale.items(), reverse=True):
        name = "backbone" if scale == 1.0 else f"backbone_x{scale:.3g}"
        add(name, params, cfg.backbone_lr * scale, backbone_wd, include_frozen=scheduled)
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen (train.freeze_backbone with no heads?)")
    return torch.optim.AdamW(groups)


def apply_backbone_schedule(model: nn.Module, cfg: TrainConfig, epoch: int) -> bool | None:
    """Freeze the encoders' backbones before `unfreeze_backbone_epoch`, train them from it on.
    Returns whether backbones train this epoch (None when no schedule is set)."""
    if cfg.unfreeze_backbone_epoch <= 0 or cfg.freeze_backbone or cfg.backbone_lr == 0:
        return None
    train_them = epoch >= cfg.unfreeze_backbone_epoch
    for encoder in (getattr(model, "vision", None), getattr(model, "text", None)):
        if encoder is not None and hasattr(encoder, "set_frozen"):
            encoder.set_frozen(not train_them)
    return train_them


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Ask every encoder backbone to recompute its activations in backward; an encoder that cannot
    is a ConfigError naming it (silently ignoring the switch would hide the memory it costs)."""
    for side in ("vision", "text"):
        encoder = getattr(model, side, None)
        if encoder is None or not list(encoder.backbone_parameters()):
            continue  # nothing pre-trained to checkpoint (small heads only)
        if not encoder.set_grad_checkpointing(True):
            raise ConfigError(
                f"train.grad_checkpointing: the {side} encoder {type(encoder).__name__} has no switch for it"
            )
