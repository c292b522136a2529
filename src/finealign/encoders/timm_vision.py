"""Any timm image model as a token encoder: ViT patch tokens or a CNN's final feature map."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from finealign.checks import check_int
from finealign.encoders.common import (
    BackboneEncoder,
    check_embed_dim,
    file_identity,
    output_dim,
    projection,
)
from finealign.errors import ConfigError, DataError, PluginError
from finealign.formats.images import as_rgb_image
from finealign.registry import ENCODERS
from finealign.tokens import TokenBatch


@dataclass
class TimmVisionConfig:
    model_name: str = "resnet50"
    embed_dim: int = 1024  # 0 = raw backbone features (no projection)
    pretrained: bool = True  # timm's normal hub download
    checkpoint_path: str | None = None  # local weights file, loaded instead of the hub
    freeze: bool = False
    img_size: int | None = None  # input resolution (ViTs are built for it; CNNs are resized to it)

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ConfigError(f"model_name must be a timm model name, got {self.model_name!r}")
        check_embed_dim(self.embed_dim)
        check_int("img_size", self.img_size, low=16, optional=True)


def _build(model_name: str, pretrained: bool, img_size: int | None) -> Any:
    import timm

    if img_size is not None:
        try:  # transformers are built for the resolution; most CNNs reject the keyword
            return timm.create_model(model_name, pretrained=pretrained, num_classes=0, img_size=img_size)
        except TypeError:
            pass
    return timm.create_model(model_name, pretrained=pretrained, num_classes=0)


def _create_timm_model(cfg: TimmVisionConfig) -> Any:
    import timm

    if not timm.is_model(cfg.model_name):
        raise ConfigError(f"unknown timm model {cfg.model_name!r} (see timm.list_models())")
    if cfg.checkpoint_path is not None:
        path = Path(cfg.checkpoint_path).expanduser()
        if not path.is_file():
            raise DataError(f"timm checkpoint not found: {path}")
        model = _build(cfg.model_name, False, cfg.img_size)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataError(f"cannot read timm checkpoint {path}: {exc}") from exc
        if isinstance(state, dict):
            state = state.get("state_dict", state.get("model", state))
        # The classifier is dropped (num_classes=0): ignore its weights, require everything else.
        missing, _ = model.load_state_dict(state, strict=False)
        if missing:
            raise DataError(f"checkpoint {path} lacks {len(missing)} weights of {cfg.model_name}, e.g. {missing[:3]}")
        return model
    try:
        return _build(cfg.model_name, cfg.pretrained, cfg.img_size)
    except (OSError, RuntimeError) as exc:
        if not cfg.pretrained:
            raise
        raise PluginError(
            f"could not fetch pretrained weights for timm model {cfg.model_name!r} ({exc}). "
            "Check the internet connection, or pass checkpoint_path=<local file> or pretrained=false."
        ) from exc


@ENCODERS.register("timm")
class TimmVisionEncoder(BackboneEncoder[TimmVisionConfig]):
    """Any timm model: ViT patch tokens (CLS/pooled as global) or CNN feature-map cells as tokens."""

    Config = TimmVisionConfig
    modality = "vision"
    backbone: Any  # a timm model, used through timm's feature API (num_features, forward_features, forward_head)

    def __init__(self, config: TimmVisionConfig | None = None):
        super().__init__()
        self.config = config or TimmVisionConfig()
        self.backbone = _create_timm_model(self.config)
        self.raw_dim = int(self.backbone.num_features)
        # Some heads widen the pooled vector (e.g. MobileNetV3's conv head); then the global vector
        # is taken as the token mean so that tokens and pooled share one space.
        self.head_matches_tokens = int(getattr(self.backbone, "head_hidden_size", self.raw_dim)) == self.raw_dim
        self.proj = projection(self.raw_dim, self.config.embed_dim)
        self.embed_dim = output_dim(self.raw_dim, self.config.embed_dim)
        self.set_frozen(self.config.freeze)
        self.transform = self._build_transform()

    def _build_transform(self):
        from timm.data import create_transform, resolve_data_config

        overrides = {}
        if self.config.img_size is not None:
            overrides["input_size"] = (3, self.config.img_size, self.config.img_size)
        data_cfg = resolve_data_config(overrides, model=self.backbone)
        return create_transform(**data_cfg, is_training=False)

    def load(self, raw: Any) -> Tensor:
        return self.transform(as_rgb_image(raw))

    def collate(self, items: Sequence[Tensor]) -> Tensor:
        return torch.stack(list(items))

    def _tokens_from_features(self, feats: Tensor) -> Tensor:
        if feats.ndim == 3:  # (B, prefix + N, C): drop CLS / register tokens
            return feats[:, int(getattr(self.backbone, "num_prefix_tokens", 0)) :]
        if feats.ndim == 4:
            if feats.shape[1] == self.raw_dim:  # (B, C, H, W)
                return feats.flatten(2).transpose(1, 2)
            return feats.flatten(1, 2)  # channels-last (B, H, W, C), e.g. Swin
        raise ConfigError(f"timm model {self.config.model_name!r} gave features of shape {tuple(feats.shape)}")

    def forward(self, images: Tensor) -> TokenBatch:
        with self.backbone_grad_context():
            feats = self.backbone.forward_features(images)
            tokens = self._tokens_from_features(feats)
            if self.head_matches_tokens:
                pooled = self.backbone.forward_head(feats, pre_logits=True)
            else:
                pooled = tokens.mean(1)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return TokenBatch(self.proj(tokens), mask, self.proj(pooled))

    def weights_identity(self) -> dict[str, Any]:
        if self.config.checkpoint_path is not None:
            return {"checkpoint": file_identity(Path(self.config.checkpoint_path).expanduser())}
        tag = getattr(self.backbone, "pretrained_cfg", {}).get("tag") if self.config.pretrained else None
        return {"hub": self.config.model_name if self.config.pretrained else None, "tag": tag}
