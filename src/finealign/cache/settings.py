"""What `finealign cache` builds (configs/cache.yaml): the keys of the `cached` dataset that reads
the entries back (dataset, encoders and their options), plus the splits and how to run the build."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finealign.checks import check_int, check_positive_int
from finealign.errors import ConfigError


@dataclass
class FeatureSource:
    """Which features a cache entry holds: a dataset through two frozen encoders. Shared by the
    `cached` dataset (which reads entries) and `finealign cache` (which builds them)."""

    dataset: str = "flickr8k"
    dataset_options: dict[str, Any] = field(default_factory=dict)  # e.g. root, max_items
    vision: str = "mobilenet_v2"
    vision_options: dict[str, Any] = field(default_factory=dict)  # checked by the encoder's Config
    text: str = "minilm"
    text_options: dict[str, Any] = field(default_factory=dict)
    # Stop a backbone at a named stage (encoders.stages: last_block, features.17, last_layer, layer.5,
    # ...): the entry holds that stage's activations for the `staged` encoder. null: final features.
    vision_stage: str | None = None
    text_stage: str | None = None
    cache_dir: str | None = None  # null: $FINEALIGN_CACHE/features, else <repo>/.cache/finealign/features
    batch_size: int = 64
    device: str = "cpu"

    def __post_init__(self) -> None:
        for key in ("dataset_options", "vision_options", "text_options"):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(f"{key} must be a mapping of options, got {getattr(self, key)!r}")
        check_positive_int("batch_size", self.batch_size)
        from finealign.encoders.stages import check_stage_name  # the encoder classes: only when checked

        for side in ("vision", "text"):
            try:
                check_stage_name(getattr(self, side), getattr(self, f"{side}_stage"))
            except ConfigError as exc:
                raise ConfigError(f"{side}_stage: {exc}") from exc

    def entry(self, split: str, *, num_workers: int = 0, verify: bool = False) -> Path:
        """This split's cache entry: built once, then reused (`cache.build.build_feature_cache`;
        `verify`: checksums too before reusing it)."""
        from finealign.cache.build import build_feature_cache  # loads the encoders: only when asked

        return build_feature_cache(
            self.dataset, dict(self.dataset_options), split,
            self.vision, dict(self.vision_options), self.text, dict(self.text_options),
            cache_dir=self.cache_dir, batch_size=self.batch_size, device=self.device, num_workers=num_workers,
            verify=verify,
            vision_stage=self.vision_stage, text_stage=self.text_stage,
        )  # fmt: skip


@dataclass
class CacheBuildSettings(FeatureSource):
    splits: list[str] = field(default_factory=lambda: ["test"])
    num_workers: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.splits, str):
            self.splits = [self.splits]
        if (
            not isinstance(self.splits, list)
            or not self.splits
            or not all(isinstance(s, str) and s for s in self.splits)
        ):
            raise ConfigError(f"splits must be a non-empty list of split names, got {self.splits!r}")
        check_int("num_workers", self.num_workers, low=0)
