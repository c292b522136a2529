"""Staged feature caches: keys, layout, and the staged encoder reading them back (random-init
MobileNetV2 and a tiny BERT on a fake Karpathy dataset: runs everywhere torchvision is)."""

import dataclasses

import numpy as np
import pytest
import torch

from finealign.cache import build_feature_cache, open_arrays, read_meta
from finealign.config import compose, validate
from finealign.encoders.hf_text import HFTextConfig
from finealign.encoders.minilm import MiniLMConfig
from finealign.encoders.mobilenet import MobileNetV2Config
from finealign.engine.model import build_model
from finealign.errors import ConfigError
from finealign.registry import create_dataset, create_encoder
from tests.data.fake_karpathy import make_fake_karpathy
from tests.encoders.tiny_models import make_random_mobilenet


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert_dir):
    pytest.importorskip("torchvision")
    root = make_fake_karpathy(tmp_path_factory.mktemp("data") / "flickr8k")
    weights = make_random_mobilenet(tmp_path_factory.mktemp("weights") / "mobilenet.pth")
    return {
        "root": str(root),
        "vision": {"checkpoint_path": str(weights), "image_size": 64},
        "text": {"model_name_or_path": str(tiny_bert_dir), "pooling": "mean"},
        "cache": tmp_path_factory.mktemp("cache"),
    }


def build(setup, vision_stage=None, text_stage=None, split="test"):
    return build_feature_cache(
        "flickr8k", {"root": setup["root"]}, split, "mobilenet_v2", setup["vision"], "hf_text", setup["text"],
        cache_dir=setup["cache"], batch_size=4, vision_stage=vision_stage, text_stage=text_stage,
    )  # fmt: skip


def test_default_encoder_options_are_what_the_shared_cache_keys_hash():
    """The shared Flickr8k cache is keyed on asdict() of these configs: a new field would re-key
    every existing entry (stages live in the cache settings, never in the encoder configs)."""
    assert [f.name for f in dataclasses.fields(MobileNetV2Config)] == [
        "embed_dim", "image_size", "checkpoint_path", "allow_download", "freeze",
    ]  # fmt: skip
    hf = ["model_name_or_path", "embed_dim", "pooling", "max_length", "freeze", "keep_special_tokens"]
    assert [f.name for f in dataclasses.fields(HFTextConfig)] == hf
    assert [f.name for f in dataclasses.fields(MiniLMConfig)] == hf


def test_a_stage_is_keyed_by_its_canonical_name_and_unstaged_entries_are_unchanged(setup):
    plain = build(setup)
    staged = build(setup, "last_block", "last_layer")
    assert build(setup, "features.17", "layer.0") == staged  # alias and canonical name: one entry
    assert staged != plain and build(setup, "last_2_blocks", "last_layer") != staged
    meta, plain_meta = read_meta(staged), read_meta(plain)
    assert "stage" not in plain_meta["vision"] and "stage" not in plain_meta["text"]  # the old identity
    assert (meta["vision"]["stage"], meta["text"]["stage"]) == ("features.17", "layer.0")
    arrays = open_arrays(staged)
    assert arrays["visual_tokens"].shape == (3, 4, 160) and meta["vision"]["dim"] == 160  # 2×2 grid at 64 px
    assert arrays["text_tokens"].shape == open_arrays(plain)["text_tokens"].shape
    np.testing.assert_array_equal(arrays["text_mask"], open_arrays(plain)["text_mask"])  # the attention mask


def test_the_staged_encoder_on_a_staged_cache_gives_the_unstaged_cache_to_float16(setup):
    """float16 activations through a frozen tail vs the float16 final features: equal to float16
    rounding (the exact float32 equality is tests/encoders/test_staged.py's)."""
    plain = create_dataset("cached", dataset="flickr8k", dataset_options={"root": setup["root"]}, vision_options=setup["vision"],
                           text="hf_text", text_options=setup["text"], cache_dir=str(setup["cache"]), batch_size=4,
                           splits=["test"])  # fmt: skip
    staged = dataclasses.replace(plain.config, vision_stage="last_block", text_stage="last_layer")
    a, b = plain.split("test"), type(plain)(staged).split("test")
    for side, rows, ref in (("vision", b.items, a.items), ("text", b.captions, a.captions)):
        encoder = create_encoder("staged", embed_dim=0, modality=side, source=b.meta[side], freeze=True).eval()
        with torch.no_grad():
            out = encoder(encoder.collate([encoder.load(rows[i]) for i in range(len(rows))]))
        want = torch.from_numpy(np.asarray(ref.tokens, dtype=np.float32))
        real = torch.from_numpy(np.array(ref.mask))
        scale = float(want.abs().max())
        torch.testing.assert_close(out.tokens[real], want[:, : out.tokens.shape[1]][real], atol=4e-3 * scale, rtol=1e-2)
        pooled = torch.from_numpy(np.asarray(ref.pooled, dtype=np.float32))
        torch.testing.assert_close(out.pooled, pooled, atol=4e-3 * scale, rtol=1e-2)
        assert float((out.tokens[real] - want[:, : out.tokens.shape[1]][real]).abs().max()) > 0  # not the same file


def overrides(setup, *extra):
    return [
        "data=flickr8k_staged", "encoder=cached_staged", "aligner=mean_max", "loss=infonce", "device=cpu",
        f"data.dataset_options.root={setup['root']}", f"data.cache_dir={setup['cache']}", "data.batch_size=4",
        f"data.vision_options.checkpoint_path={setup['vision']['checkpoint_path']}", "data.vision_options.image_size=64",
        "data.text=hf_text", f"data.text_options.model_name_or_path={setup['text']['model_name_or_path']}",
        "data.text_options.pooling=mean", "encoder.embed_dim=16", *extra,
    ]  # fmt: skip


def test_the_engine_fills_the_staged_encoders_from_the_cache_and_refuses_other_pairings(setup):
    spec = validate(compose(overrides=overrides(setup)))
    data = create_dataset(*spec.data[:1], **spec.data[1])
    meta = data.split("test").meta
    model = build_model(spec, meta)
    assert (model.vision.stage, model.text.stage) == ("features.17", "layer.0")
    assert model.vision.config.source["weights"] == meta["vision"]["weights"]
    assert {n.split(".")[2] for n, _ in model.named_parameters() if ".backbone." in n} == {"blocks", "layer"}
    spec = validate(compose(overrides=overrides(setup, "encoder=cached")))
    with pytest.raises(ConfigError, match="stop at stage features.17 .*encoder.vision.name=staged"):
        build_model(spec, meta)
    unstaged = create_dataset("cached", **{**spec.data[1], "vision_stage": None, "text_stage": None}).split("test")
    spec = validate(compose(overrides=overrides(setup)))
    with pytest.raises(ConfigError, match="unstaged cache"):
        build_model(spec, unstaged.meta)


def test_words_only_composes_with_the_staged_text_tail(setup):
    """text_tokens=words on a staged cache: the tail attends over every real position, its output
    is cut to the words afterwards, and with the tail frozen that equals words-only on the unstaged
    cache (tokens and the mean-pooled vector, to float16)."""
    base = {"dataset_options": {"root": setup["root"]}, "vision_options": setup["vision"], "text": "hf_text",
            "text_options": setup["text"], "cache_dir": str(setup["cache"]), "batch_size": 4, "splits": ["test"],
            "text_tokens": "words"}  # fmt: skip
    plain = create_dataset("cached", **base).split("test")
    staged = create_dataset("cached", **base, text_stage="last_layer", max_items={"test": 2}).split("test")
    assert staged.num_captions == 8 and plain.meta["text_tokens"] == "words"
    encoder = create_encoder("staged", embed_dim=0, modality="text", source=staged.meta["text"], freeze=True).eval()
    rows = [staged.captions[i] for i in range(staged.num_captions)]
    with torch.no_grad():
        out = encoder(encoder.collate([encoder.load(r) for r in rows]))
    for i, row in enumerate(rows):
        want = plain.captions[i]  # the first two test images' captions come first in both
        assert row["mask"].sum() == want["mask"].sum() == row["attention_mask"].sum() - 3  # [CLS] "." [SEP]
        n = int(row["attention_mask"].sum())
        assert out.mask[i, :n].tolist() == want["mask"][:n].tolist()
        kept = torch.from_numpy(np.asarray(want["tokens"][want["mask"]], dtype=np.float32))
        scale = float(kept.abs().max())
        torch.testing.assert_close(out.tokens[i][out.mask[i]], kept, atol=4e-3 * scale, rtol=1e-2)
        torch.testing.assert_close(out.pooled[i], torch.from_numpy(want["pooled"]), atol=4e-3 * scale, rtol=1e-2)
