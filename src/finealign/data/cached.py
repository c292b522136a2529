"""Frozen-encoder features of a raw dataset, encoded once on first use and cached.

`cached` wraps any raw dataset (Flickr8k by default) and a pair of frozen encoders: asking for a
split builds its feature cache (or reuses a complete one; see finealign.cache) and opens it
memory-mapped. Training and sweeps over aligners/losses then run from the cache, without the
backbones, in minutes on a CPU. `max_items` keeps the first N images of a split (with all their
captions), e.g. the 3,000-image training budget of the Flickr8k baseline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import cast

import torch

from finealign.cache.settings import FeatureSource
from finealign.checks import check_choice, check_int
from finealign.data.base import ConfiguredSplits, RetrievalSplit
from finealign.data.features import FeatureRows, load_feature_cache
from finealign.data.words import TEXT_TOKENS, text_encoder_config, words_only
from finealign.errors import DataError
from finealign.registry import DATASETS, create_dataset


@dataclass
class CachedConfig(FeatureSource):
    """The features to read (FeatureSource, shared with `finealign cache`) and which splits."""

    splits: list[str] = field(default_factory=lambda: ["train", "val", "test"])
    max_items: dict[str, int] = field(default_factory=dict)  # split → first N images (0/absent: all)
    # which caption positions the aligners see: all real tokens, or words only (data.words)
    text_tokens: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        for split, n in dict(self.max_items).items():
            check_int(f"max_items.{split}", n, low=0)
        check_choice("text_tokens", self.text_tokens, TEXT_TOKENS)
        if self.text_tokens == "words":
            text_encoder_config(self.text, {})  # a Hugging Face text encoder, or a ConfigError now


def first_items(split: RetrievalSplit, n: int) -> RetrievalSplit:
    """The first `n` items of a feature split with every caption that belongs to them."""
    if n <= 0 or n >= split.num_items:
        return split
    # cast: a feature split's items and captions are FeatureRows (load_feature_cache builds them)
    items, captions = cast(FeatureRows, split.items), cast(FeatureRows, split.captions)
    keep = (split.caption_item < n).nonzero().flatten().numpy()
    return RetrievalSplit(
        name=split.name,
        items=items.take(slice(0, n)),
        captions=captions.take(keep),
        caption_item=split.caption_item[keep],
        meta={**split.meta, "num_items": n, "num_captions": len(keep), "first_items": n},
    )


@DATASETS.register("cached")
class CachedFeatureDataset(ConfiguredSplits[CachedConfig]):
    """A raw dataset through frozen encoders, feature-cached on first use (e.g. Flickr8k + MobileNetV2 + MiniLM)."""

    Config = CachedConfig

    def __init__(self, config: CachedConfig | None = None):
        self.config = config if config is not None else CachedConfig()

    def split(self, name: str) -> RetrievalSplit:
        self.require_split(name)
        c = self.config
        entry = c.entry(name)
        split = load_feature_cache(entry, name)
        if c.text_tokens == "words":
            split = self._words_only(split)
        return first_items(split, int(dict(c.max_items).get(name, 0) or 0))

    def _words_only(self, split: RetrievalSplit) -> RetrievalSplit:
        """The split with the captions' aligner mask cut to their words (data.words)."""
        c, text = self.config, split.meta["text"]
        raw = create_dataset(c.dataset, **c.dataset_options).split(split.name)
        if not torch.equal(raw.caption_item, split.caption_item):
            raise DataError(
                f"{split.meta.get('path')}: its captions are not the dataset's {c.dataset}/{split.name} captions"
            )
        captions = words_only(
            cast(FeatureRows, split.captions), list(raw.captions), text["name"], text["options"],
            staged=bool(text.get("stage")), where=f"{c.dataset}/{split.name} (text_tokens=words)",
        )  # fmt: skip
        return dataclasses.replace(split, captions=captions, meta={**split.meta, "text_tokens": "words"})
