"""A word vocabulary built from training captions (for encoders trained from scratch, e.g. BiGRU)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+")


def tokenize(caption: str) -> list[str]:
    """Lower-case words; punctuation splits words and is dropped."""
    return _WORD.findall(caption.lower())


class Vocabulary:
    """word ↔ id. Id 0 is padding, id 1 stands for every unknown word."""

    def __init__(self, words: Iterable[str]):
        self.words = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        counts = Counter(w for c in captions for w in tokenize(c))
        # Frequent words first, ties alphabetically: the same captions always give the same ids.
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept)

    def encode(self, caption: str) -> list[int]:
        """Word ids of a caption; an empty caption becomes [<unk>] so that every caption has a token."""
        ids = [self.index.get(w, 1) for w in tokenize(caption)]
        return ids or [1]

    def __len__(self) -> int:
        return len(self.words)
