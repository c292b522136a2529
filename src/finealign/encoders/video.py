"""Video as a sequence of frames: each sampled frame becomes one token (its global vector)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from finealign.checks import check_int, check_positive_int
from finealign.encoders.base import Encoder
from finealign.encoders.common import check_embed_dim, output_dim, projection
from finealign.errors import ConfigError, DataError
from finealign.registry import ENCODERS
from finealign.tokens import TokenBatch


@dataclass
class VideoConfig:
    # Registered vision encoder applied to every frame, and its options. None = the dataset hands
    # over precomputed per-frame features (T, feature_dim) instead of frames.
    frame_encoder: str | None = "timm"
    frame_options: dict[str, Any] = field(default_factory=dict)  # embed_dim defaults to 0 (raw)
    feature_dim: int = 0  # width of precomputed frame features (frame_encoder=None only)
    num_frames: int = 12  # frames sampled uniformly per video
    embed_dim: int = 0  # 0 = frame features as they come

    def __post_init__(self) -> None:
        check_positive_int("num_frames", self.num_frames)
        check_embed_dim(self.embed_dim)
        if self.frame_encoder is None:
            check_int("feature_dim", self.feature_dim, note=" when frame_encoder is null (precomputed frame features)")
        elif not isinstance(self.frame_encoder, str):
            raise ConfigError(f"frame_encoder must be a registered vision encoder name, got {self.frame_encoder!r}")
        if not isinstance(self.frame_options, dict):
            raise ConfigError(f"frame_options must be a mapping, got {self.frame_options!r}")


def uniform_indices(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over `total` frames (centre of each segment); all if fewer."""
    if total <= count:
        return list(range(total))
    return [int((i + 0.5) * total / count) for i in range(count)]


@ENCODERS.register("video")
class VideoEncoder(Encoder[VideoConfig]):
    """Frames through a registered vision encoder; one token per frame, mean over frames as global."""

    Config = VideoConfig
    modality = "video"

    def __init__(self, config: VideoConfig | None = None):
        super().__init__()
        from finealign.registry import create_encoder

        self.config = config or VideoConfig()
        if self.config.frame_encoder is None:
            self.frame_encoder = None
            frame_dim = self.config.feature_dim
        else:
            # Frames stay raw unless asked otherwise: this encoder's own `embed_dim` projects.
            options = {"embed_dim": 0, **self.config.frame_options}
            self.frame_encoder = create_encoder(self.config.frame_encoder, **options)
            frame_dim = self.frame_encoder.embed_dim
        self.raw_dim = frame_dim
        self.proj = projection(frame_dim, self.config.embed_dim)
        self.embed_dim = output_dim(frame_dim, self.config.embed_dim)

    def load(self, raw: Any) -> Tensor:
        """A list of frames (images or paths) → (T, C, H, W); a (T, d) feature array → (T, d)."""
        if isinstance(raw, np.ndarray) or isinstance(raw, Tensor):
            if self.frame_encoder is not None:
                raise DataError("got precomputed frame features but the video encoder has a frame_encoder")
            feats = torch.as_tensor(np.asarray(raw), dtype=torch.float32)
            if feats.ndim != 2 or feats.shape[1] != self.config.feature_dim:
                raise DataError(f"frame features must be (T, {self.config.feature_dim}), got {tuple(feats.shape)}")
            return feats[uniform_indices(len(feats), self.config.num_frames)]
        if self.frame_encoder is None:
            raise DataError("the video encoder expects precomputed frame features (frame_encoder=None)")
        frames = list(raw)
        if not frames:
            raise DataError("a video has no frames")
        picked = [frames[i] for i in uniform_indices(len(frames), self.config.num_frames)]
        return torch.stack([self.frame_encoder.load(f) for f in picked])

    def collate(self, items: Sequence[Tensor]) -> dict[str, Tensor]:
        lengths = torch.tensor([len(x) for x in items], dtype=torch.long)
        frames = items[0].new_zeros((len(items), int(lengths.max()), *items[0].shape[1:]))
        for i, x in enumerate(items):
            frames[i, : len(x)] = x
        mask = torch.arange(frames.shape[1])[None, :] < lengths[:, None]
        return {"frames": frames, "mask": mask}

    def forward(self, batch: dict[str, Tensor]) -> TokenBatch:
        frames, mask = batch["frames"], batch["mask"]
        if self.frame_encoder is None:
            per_frame = frames
        else:
            real = frames[mask]  # only real frames go through the backbone
            encoded = self.frame_encoder(real).with_pooled().pooled
            per_frame = encoded.new_zeros((*mask.shape, encoded.shape[-1]))
            per_frame[mask] = encoded
        return TokenBatch(self.proj(per_frame), mask).with_pooled()

    def backbone_parameters(self) -> list:
        return self.frame_encoder.backbone_parameters() if self.frame_encoder is not None else []

    def weights_identity(self) -> dict[str, Any]:
        inner = getattr(self.frame_encoder, "weights_identity", None)
        return {"frame_encoder": inner() if inner else None}
