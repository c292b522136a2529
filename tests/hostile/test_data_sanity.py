"""Data sanity before training (issue 26): the same image twice in a split, or one image in two
splits, is a DataError (opt out with allow_shared_images=true); a caption must hold a word; a
replaced image file makes its feature cache entry stale instead of reusing its old features."""

import json
import os

import numpy as np
import pytest
import torch

from finealign.cache import build as build_module
from finealign.cache import build_feature_cache, read_meta
from finealign.config import compose
from finealign.data.features import write_feature_cache
from finealign.data.sanity import check_splits, has_word
from finealign.engine.experiment import run_experiment
from finealign.errors import DataError
from finealign.registry import create_dataset, create_encoder
from tests.data.fake_karpathy import make_fake_karpathy


def _karpathy(tmp_path, edit):
    root = make_fake_karpathy(tmp_path / "flickr8k")
    data = json.loads((root / "dataset_flickr8k.json").read_text())
    edit(data["images"])
    (root / "dataset_flickr8k.json").write_text(json.dumps(data))
    dataset = create_dataset("flickr8k", root=str(root))
    return {name: dataset.split(name) for name in ("train", "val", "test")}


def test_an_image_twice_in_the_test_split_is_a_data_error(tmp_path):
    # fake layout: images 4, 5, 6 are the test split; image 6 now names image 5's file
    splits = _karpathy(tmp_path, lambda images: images[6].update(filename=images[5]["filename"]))
    with pytest.raises(DataError, match=r"split 'test' holds 1 image\(s\) more than once: .*img5.jpg"):
        check_splits(splits)


def test_a_test_image_also_in_train_is_a_data_error_unless_allowed(tmp_path, caplog):
    splits = _karpathy(tmp_path, lambda images: images[4].update(filename=images[0]["filename"]))
    with pytest.raises(
        DataError, match=r"splits 'train' and 'test' share 1 image\(s\): .*img0.jpg.*allow_shared_images"
    ):
        check_splits(splits)
    check_splits(splits, allow_shared_images=True)  # a dataset whose splits really share images
    assert "share 1 image" in caplog.text


@pytest.mark.parametrize("text", ["\u200b\u200b", "\u200b \u2060\ufeff", " . , ", "\t\n"])
def test_captions_without_a_word_are_refused(tmp_path, text):
    assert not has_word(text) and has_word("a dog") and has_word("犬") and has_word("42")
    with pytest.raises(DataError, match="image entry 4 has an empty or malformed caption"):
        _karpathy(tmp_path, lambda images: images[4]["sentences"][0].update(raw=text))


def _features(folder, items, seed):
    g = np.random.default_rng(seed)
    n = len(items)
    return write_feature_cache(
        folder, visual_tokens=g.normal(size=(n, 3, 8)), visual_mask=np.ones((n, 3), bool),
        visual_pooled=g.normal(size=(n, 8)), text_tokens=g.normal(size=(2 * n, 2, 8)),
        text_mask=np.ones((2 * n, 2), bool), text_pooled=g.normal(size=(2 * n, 8)),
        caption_item=np.repeat(np.arange(n), 2), meta={"items": items},
    )  # fmt: skip


def test_a_run_on_features_whose_splits_overlap_stops_before_training(tmp_path):
    names = [f"/data/img{i}.jpg" for i in range(40)]
    splits = {"train": names[:24], "val": names[24:32], "test": [*names[32:39], names[3]]}  # names[3]: train too
    for split, items in splits.items():
        _features(tmp_path / split, items, seed=len(items))
    overrides = ["data=features", f"data.root={tmp_path}", "encoder=cached", "encoder.embed_dim=8", "train=quick",
                 "train.batch_size=8", "device=cpu", f"output_dir={tmp_path / 'run'}", "train.tensorboard=false"]  # fmt: skip
    with pytest.raises(DataError, match=r"splits 'train' and 'test' share 1 image\(s\): '/data/img3.jpg'"):
        run_experiment(compose(overrides=overrides))
    assert not (tmp_path / "run" / "train.json").exists()
    result = run_experiment(compose(overrides=[*overrides, "allow_shared_images=true", "train.epochs=1"]))
    assert result["epochs"] == 1


# -- cache entries follow the image files ------------------------------------------------------------
@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    from tests.encoders.tiny_models import make_tiny_bert

    torch.manual_seed(0)
    bert = make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))
    weights = tmp_path_factory.mktemp("weights") / "resnet.pth"
    torch.save(create_encoder("timm", model_name="test_resnet", pretrained=False, embed_dim=0).backbone.state_dict(),
               weights)  # fmt: skip
    return {"model_name": "test_resnet", "checkpoint_path": str(weights), "img_size": 32}, {
        "model_name_or_path": str(bert)
    }


def _build(root, cache_dir, encoders):
    return build_feature_cache("flickr8k", {"root": str(root)}, "test", "timm", encoders[0], "hf_text", encoders[1],
                               cache_dir=cache_dir, batch_size=4)  # fmt: skip


def test_a_replaced_image_file_rebuilds_its_entry_and_a_recopied_one_does_not(tmp_path, encoders, monkeypatch):
    root = make_fake_karpathy(tmp_path / "flickr8k")
    entry = _build(root, tmp_path / "cache", encoders)
    before = np.load(entry / "visual_pooled.npy")
    image = root / "images" / "img5.jpg"
    # a fresh copy of the same bytes (new mtime): reused, only the recorded stat changes
    image.write_bytes(image.read_bytes())
    os.utime(image, ns=(1, 1))
    monkeypatch.setattr(build_module, "encode_items", lambda *a, **k: pytest.fail("re-encoded an unchanged entry"))
    assert _build(root, tmp_path / "cache", encoders) == entry
    assert read_meta(entry)["item_files"][1][1] == 1
    monkeypatch.undo()
    # another picture under the same name: the entry is stale and rebuilt under the same key
    from PIL import Image

    Image.new("RGB", (40, 40), (250, 0, 0)).save(image)
    with pytest.warns(RuntimeWarning, match="stale.*1 image file\\(s\\) changed.*img5.jpg"):
        assert _build(root, tmp_path / "cache", encoders) == entry
    after = np.load(entry / "visual_pooled.npy")
    assert not np.array_equal(before[1], after[1]) and np.array_equal(before[0], after[0])


def test_an_entry_built_before_the_record_is_adopted_not_rebuilt(tmp_path, encoders, monkeypatch):
    root = make_fake_karpathy(tmp_path / "flickr8k")
    entry = _build(root, tmp_path / "cache", encoders)
    meta = read_meta(entry)
    del meta["item_files"]  # what every entry written before this change looks like
    (entry / "meta.json").write_text(json.dumps(meta))
    monkeypatch.setattr(build_module, "encode_items", lambda *a, **k: pytest.fail("rebuilt an existing entry"))
    assert _build(root, tmp_path / "cache", encoders) == entry  # same key: existing caches stay valid
    assert len(read_meta(entry)["item_files"]) == 3


def test_a_plain_cache_rerun_rebuilds_an_entry_whose_bytes_changed(tmp_path, encoders):
    root = make_fake_karpathy(tmp_path / "flickr8k")
    entry = _build(root, tmp_path / "cache", encoders)
    pooled = np.load(entry / "visual_pooled.npy", mmap_mode="r+")
    good = np.array(pooled)
    pooled[0] = 0  # same size, shape and dtype: training's cheap check cannot see it
    pooled.flush()
    del pooled
    assert _build(root, tmp_path / "cache", encoders) == entry  # training reuses it (no checksums per run)
    rebuild = dict(cache_dir=tmp_path / "cache", batch_size=4, verify=True)  # what `finealign cache` does
    with pytest.warns(RuntimeWarning, match="damaged or stale .*SHA-256 differs"):
        build_feature_cache("flickr8k", {"root": str(root)}, "test", "timm", encoders[0], "hf_text", encoders[1],
                            **rebuild)  # fmt: skip
    np.testing.assert_array_equal(np.load(entry / "visual_pooled.npy"), good)
