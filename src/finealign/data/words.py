"""Words-only text tokens (`cached` dataset, `text_tokens: words`): the aligners see a caption's
words, not [CLS]/[SEP] nor punctuation-only word pieces.

The cache format is unchanged: the caption strings are tokenised again with the tokenizer the
cache used (the text encoder's own, from the entry's meta.json: model, max_length), which is fast,
and must give exactly the cached mask's real positions (else a DataError: the cache was built with
another tokenizer or max_length). A position is a word unless the tokenizer marks it special or its
piece (without a "##" prefix) is made only of punctuation — Unicode category P* or ASCII
`string.punctuation` (so "$" and "&" count as punctuation, "5" and "café" as words).

The tokens stay; only the mask changes. The global vector of a text encoder that pools by the
masked mean (MiniLM) becomes the mean of the kept tokens, so words-only changes the global
aligner's input the same way; one that pools by [CLS] keeps its [CLS] vector. A staged text cache
keeps every real position for the tail's attention, and the words mask applies to the tail's
output (after the tail: the layers still see [CLS]/[SEP] and punctuation as in pre-training).
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

from finealign.data.features import FeatureRows
from finealign.errors import ConfigError, DataError

TEXT_TOKENS = ("all", "words")


def is_punctuation_piece(piece: str) -> bool:
    """A word piece made only of punctuation ("," "." "##." "..." "'s" is not: it has letters)."""
    text = piece[2:] if piece.startswith("##") else piece
    return bool(text) and all(c in string.punctuation or unicodedata.category(c).startswith("P") for c in text)


def text_encoder_config(name: str, options: dict[str, Any]) -> Any:
    """The cache's text encoder config (a Hugging Face one: words need its tokenizer)."""
    from finealign.encoders.hf_text import HFTextEncoder
    from finealign.registry import ensure_builtins, registry

    ensure_builtins("encoders")
    target = registry("encoders").get(name)
    if not (isinstance(target, type) and issubclass(target, HFTextEncoder)):
        raise ConfigError(
            f"text_tokens=words re-tokenises captions with the cache's tokenizer: it needs a Hugging Face "
            f"text encoder (hf_text, minilm), not {name!r}"
        )
    return target, target.Config(**options)


def word_positions(
    tokenizer: Any, captions: Sequence[str], max_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(real, special, punctuation) as (M, L) bool arrays over the re-tokenised captions (truncated
    as the encoder truncates; L = the longest): which positions hold a token, which of them the
    tokenizer marks special ([CLS], [SEP]), which are punctuation-only pieces."""
    encoded = tokenizer(list(captions), truncation=True, max_length=max_length, return_special_tokens_mask=True)
    ids: list[list[int]] = encoded["input_ids"]
    seen = sorted({i for row in ids for i in row})
    is_punct = np.zeros(max(seen, default=0) + 1, dtype=bool)
    is_punct[seen] = [is_punctuation_piece(p) for p in tokenizer.convert_ids_to_tokens(seen)]
    length = max(map(len, ids), default=0)
    real, special, punct = (np.zeros((len(ids), length), dtype=bool) for _ in range(3))
    for j, (row, marks) in enumerate(zip(ids, encoded["special_tokens_mask"], strict=True)):
        real[j, : len(row)] = True
        special[j, : len(row)] = np.asarray(marks, dtype=bool)
        punct[j, : len(row)] = is_punct[row]
    return real, special, punct


def _padded(a: np.ndarray, width: int) -> np.ndarray:
    return np.pad(a, ((0, 0), (0, max(0, width - a.shape[1]))))


def words_only(
    rows: FeatureRows,
    captions: Sequence[str],
    text_name: str,
    text_options: dict[str, Any],
    *,
    staged: bool,
    where: str,
) -> FeatureRows:
    """`rows` (a cache's caption rows) with the aligners' mask cut to the words; see the module doc."""
    from finealign.encoders.hf_text import load_tokenizer

    cls, config = text_encoder_config(text_name, text_options)
    if len(captions) != len(rows):
        raise DataError(f"{where}: the cache has {len(rows)} captions but the dataset gives {len(captions)}")
    real, special, punct = word_positions(load_tokenizer(cls.source_of(config)), captions, config.max_length)
    cached = np.asarray(rows.mask, dtype=bool)
    width = max(cached.shape[1], real.shape[1])
    real, special, punct, padded = (_padded(a, width) for a in (real, special, punct, cached))
    expected = real if config.keep_special_tokens else real & ~special  # the cache's mask, as the encoder made it
    bad = np.flatnonzero((expected != padded).any(1))
    if len(bad):
        j = int(bad[0])
        raise DataError(
            f"{where}: caption {j} ({captions[j]!r}) has {int(cached[j].sum())} real positions in the cache but "
            f"{int(expected[j].sum())} when re-tokenised ({len(bad)} captions differ): the cache was built with "
            "another tokenizer or max_length; text_tokens=words needs the cache's own"
        )
    words = (real & ~special & ~punct)[:, : cached.shape[1]]
    empty = np.flatnonzero(~words.any(1))
    if len(empty):
        j = int(empty[0])
        raise DataError(
            f"{where}: caption {j} ({captions[j]!r}) has no word token (only [CLS]/[SEP]/punctuation), so "
            f"text_tokens=words leaves nothing to align ({len(empty)} such captions); use text_tokens=all"
        )
    pool_kept = config.pooling == "mean" and not staged  # a staged tail pools its own output
    return FeatureRows(rows.tokens, rows.mask, rows.pooled, keep=words, pool_kept=pool_kept)
