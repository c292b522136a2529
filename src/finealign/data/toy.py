"""A synthetic retrieval dataset with learnable fine-grained structure, in the precomputed format.

A shared vocabulary of `concepts` latent vectors is mapped into a visual feature space and a text
feature space by two fixed random linear maps. Each image shows a random set of concepts (one
region token per concept, plus noise; a random number of them are real, the rest padding); each
of its captions mentions a random subset of those concepts (one word token each, in random
order). A caption therefore matches its image through individual concept (token) matches, which
token-level aligners can exploit and a learned head can pick up in a few seconds on a CPU.
All splits share the vocabulary and the maps, so what is learned on `train` transfers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from finealign.checks import check_positive_int
from finealign.data.base import RetrievalSplit
from finealign.data.features import FeatureRows, write_feature_cache
from finealign.errors import ConfigError
from finealign.registry import DATASETS

SPLIT_OFFSETS = {"train": 1, "val": 2, "test": 3}


@dataclass
class ToyConfig:
    num_train: int = 512
    num_val: int = 128
    num_test: int = 128
    captions_per_item: int = 2
    concepts: int = 64  # vocabulary size
    latent_dim: int = 16
    regions: int = 8  # max region tokens per image
    words: int = 5  # max word tokens per caption
    vision_dim: int = 32
    text_dim: int = 24
    noise: float = 0.3  # token noise, relative to unit-variance concept features
    seed: int = 0

    def __post_init__(self) -> None:
        for key in (
            "num_train",
            "num_val",
            "num_test",
            "captions_per_item",
            "concepts",
            "latent_dim",
            "regions",
            "words",
            "vision_dim",
            "text_dim",
        ):
            value = getattr(self, key)
            check_positive_int(key, value)
        if self.regions > self.concepts:
            raise ConfigError(f"regions ({self.regions}) cannot exceed concepts ({self.concepts})")
        if self.words < 2:
            raise ConfigError(f"words must be >= 2, got {self.words}")
        if not isinstance(self.noise, (int, float)) or self.noise < 0:
            raise ConfigError(f"noise must be >= 0, got {self.noise!r}")


@DATASETS.register("toy")
class ToyDataset:
    """Synthetic concept-matching retrieval data (train/val/test) in the precomputed format."""

    Config = ToyConfig

    def __init__(self, config: ToyConfig | None = None):
        self.config = config if config is not None else ToyConfig()
        c = self.config
        rng = np.random.default_rng(c.seed)
        self.vocabulary = rng.standard_normal((c.concepts, c.latent_dim))
        self.to_vision = rng.standard_normal((c.latent_dim, c.vision_dim)) / np.sqrt(c.latent_dim)
        self.to_text = rng.standard_normal((c.latent_dim, c.text_dim)) / np.sqrt(c.latent_dim)
        self._cache: dict[str, dict[str, np.ndarray]] = {}

    @property
    def split_names(self) -> list[str]:
        return list(SPLIT_OFFSETS)

    def has_split(self, name: str) -> bool:
        return name in SPLIT_OFFSETS

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        """The split's arrays, named as in the feature-cache layout."""
        if name not in SPLIT_OFFSETS:
            raise ConfigError(f"toy dataset has no split {name!r} (splits: {', '.join(SPLIT_OFFSETS)})")
        if name not in self._cache:
            self._cache[name] = self._generate(name)
        return self._cache[name]

    def split(self, name: str) -> RetrievalSplit:
        a = self.arrays(name)
        items = FeatureRows(a["visual_tokens"], a["visual_mask"], a["visual_pooled"])
        captions = FeatureRows(a["text_tokens"], a["text_mask"], a["text_pooled"])
        return RetrievalSplit(
            name=name,
            items=items,
            captions=captions,
            caption_item=torch.from_numpy(a["caption_item"]),
            meta={"vision_dim": items.dim, "text_dim": captions.dim, "synthetic": True},
        )

    def write(self, root: str | Path) -> Path:
        """Write every split as a feature cache under root/<split> (for the `features` dataset)."""
        root = Path(root)
        for name in SPLIT_OFFSETS:
            write_feature_cache(root / name, **self.arrays(name), meta={"source": "toy", "split": name})
        return root

    def _generate(self, name: str) -> dict[str, np.ndarray]:
        c = self.config
        n = {"train": c.num_train, "val": c.num_val, "test": c.num_test}[name]
        rng = np.random.default_rng([c.seed, SPLIT_OFFSETS[name]])
        m = n * c.captions_per_item
        v_tokens = np.zeros((n, c.regions, c.vision_dim), dtype=np.float32)
        v_mask = np.zeros((n, c.regions), dtype=bool)
        t_tokens = np.zeros((m, c.words, c.text_dim), dtype=np.float32)
        t_mask = np.zeros((m, c.words), dtype=bool)
        caption_item = np.repeat(np.arange(n, dtype=np.int64), c.captions_per_item)
        for i in range(n):
            shown = rng.choice(c.concepts, size=rng.integers(max(2, c.regions // 2), c.regions + 1), replace=False)
            latent = self.vocabulary[shown] + c.noise * rng.standard_normal((len(shown), c.latent_dim))
            v_tokens[i, : len(shown)] = latent @ self.to_vision
            v_mask[i, : len(shown)] = True
            for k in range(c.captions_per_item):
                j = i * c.captions_per_item + k
                count = rng.integers(2, min(c.words, len(shown)) + 1)
                said = rng.choice(shown, size=count, replace=False)
                words = self.vocabulary[said] + c.noise * rng.standard_normal((count, c.latent_dim))
                t_tokens[j, :count] = words @ self.to_text
                t_mask[j, :count] = True
        return {
            "visual_tokens": v_tokens,
            "visual_mask": v_mask,
            "visual_pooled": _masked_mean(v_tokens, v_mask),
            "text_tokens": t_tokens,
            "text_mask": t_mask,
            "text_pooled": _masked_mean(t_tokens, t_mask),
            "caption_item": caption_item,
        }


def _masked_mean(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(tokens.dtype)
    return (tokens * weights).sum(1) / np.maximum(weights.sum(1), 1.0)
