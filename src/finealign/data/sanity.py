"""What a run checks on its splits before training: no image twice within a split, no image in two
splits (a test image seen in training inflates every recall), and every caption holds a word.

Images are told apart by what the split records of them — the image paths of a raw dataset, or the
paths a feature cache entry recorded when it was built (meta.json "items") — so a split without
such names (synthetic data, plain arrays) is not checked for them. A dataset whose splits really
share images opts out with `allow_shared_images: true` (the findings are then logged, not raised).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from finealign.data.base import RetrievalSplit
from finealign.errors import DataError

log = logging.getLogger(__name__)
SHOWN = 3  # examples named in a message


def has_word(text: Any) -> bool:
    """True when `text` holds at least one letter or digit (in any script): whitespace, zero-width
    characters and punctuation alone are no caption."""
    return isinstance(text, str) and any(ch.isalnum() for ch in text)


def item_names(split: RetrievalSplit) -> list[str] | None:
    """The names (paths) of the split's items, or None when the split records none."""
    recorded = split.meta.get("items")
    if isinstance(recorded, (list, tuple)) and len(recorded) >= split.num_items:
        return [str(x) for x in recorded[: split.num_items]]  # a first-N subset keeps the first N names
    items = split.items
    if split.num_items and all(isinstance(x, (str, Path)) for x in items):
        return [str(x) for x in items]
    return None


def _examples(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:SHOWN])
    return shown + (f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else "")


def split_problems(splits: Mapping[str, RetrievalSplit]) -> list[str]:
    """Every duplicate within a split and every overlap between two splits, as sentences."""
    problems = []
    names = {name: item_names(split) for name, split in splits.items()}
    for name, items in names.items():
        if items is None:
            continue
        twice = sorted(n for n, count in Counter(items).items() if count > 1)
        if twice:
            problems.append(f"split {name!r} holds {len(twice)} image(s) more than once: {_examples(twice)}")
    checked = [(n, set(items)) for n, items in names.items() if items is not None]
    for i, (first, first_items) in enumerate(checked):
        for second, second_items in checked[i + 1 :]:
            shared = sorted(first_items & second_items)
            if shared:
                problems.append(f"splits {first!r} and {second!r} share {len(shared)} image(s): {_examples(shared)}")
    return problems


def caption_problems(split: RetrievalSplit) -> list[str]:
    """Text captions without a word (empty, whitespace or zero-width characters only)."""
    captions = split.captions
    if not len(captions) or not isinstance(captions[0], str):
        return []  # feature rows: their text was checked when the cache was built
    empty = [j for j, text in enumerate(captions) if not has_word(text)]
    if not empty:
        return []
    shown = ", ".join(f"{j}: {captions[j]!r}" for j in empty[:SHOWN])
    return [f"split {split.name!r} has {len(empty)} caption(s) without a word ({shown})"]


def check_splits(splits: Mapping[str, RetrievalSplit], *, allow_shared_images: bool = False) -> None:
    """DataError naming every problem found, before any step is trained. With
    `allow_shared_images`, shared or repeated images are logged instead (captions are always checked)."""
    shared = split_problems(splits)
    captions = [p for split in splits.values() for p in caption_problems(split)]
    if shared and allow_shared_images:
        log.warning("allow_shared_images=true: %s", "; ".join(shared))
        shared = []
    if shared or captions:
        advice = " (a dataset whose splits really share images: set allow_shared_images=true)" if shared else ""
        raise DataError("the data is not fit to train or test on: " + "; ".join(shared + captions) + advice)
