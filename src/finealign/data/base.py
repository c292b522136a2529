"""The dataset contract: one retrieval split with captions grouped by image (or video).

`RetrievalSplit` holds what evaluation needs: `num_items` images/videos, the captions, and for each
caption the index of the item it describes (`caption_item`), so an image keeps all its (usually 5)
captions and image→text counts a hit when any of them is retrieved.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import torch


@dataclass
class RetrievalSplit:
    """One split of a retrieval dataset.

    items: per image/video, what its vision-side encoder loads (path, frame list, feature index...).
    captions: every caption, as text (or whatever the text-side encoder loads).
    caption_item: (n_captions,) long tensor, the item index each caption belongs to.
    load_item: raw loader for an item (defaults to returning `items[i]`).
    """

    name: str
    items: Sequence[Any]
    captions: Sequence[Any]
    caption_item: torch.Tensor
    load_item: Callable[[Any], Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def raw_item(self, i: int) -> Any:
        return self.load_item(self.items[i]) if self.load_item else self.items[i]

    def captions_of(self, i: int) -> list[int]:
        return (self.caption_item == i).nonzero().flatten().tolist()


class SplitsConfig(Protocol):
    """A dataset Config that names its splits: a list of names, or a dict keyed by name."""

    @property
    def splits(self) -> Collection[str]: ...


#: The Config dataclass of a dataset with configured splits.
C = TypeVar("C", bound=SplitsConfig)


class ConfiguredSplits(Generic[C]):
    """Mixin for datasets whose splits are the keys (or items) of `self.config.splits`. A dataset
    (`class MyDataset(ConfiguredSplits[MyConfig])`) sets `Config` and assigns `self.config`; the
    type parameter types `self.config`."""

    config: C

    @property
    def split_names(self) -> list[str]:
        return list(self.config.splits)

    def has_split(self, name: str) -> bool:
        return name in self.config.splits

    def require_split(self, name: str) -> None:
        if name not in self.config.splits:
            from finealign.errors import ConfigError

            raise ConfigError(f"{type(self).__name__} has no split {name!r} (splits: {', '.join(self.config.splits)})")
