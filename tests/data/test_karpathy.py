import json
import os

import pytest
import torch

from finealign.data import karpathy as karpathy_module
from finealign.errors import ConfigError, DataError
from finealign.registry import create_dataset, list_datasets
from tests.conftest import FLICKR8K
from tests.data.fake_karpathy import LAYOUT, caption, make_fake_karpathy


@pytest.fixture
def fake_root(tmp_path):
    return make_fake_karpathy(tmp_path / "flickr8k")


def test_presets_are_registered():
    assert {"karpathy", "flickr8k", "flickr30k", "coco", "msrvtt"} <= set(list_datasets())


def test_captions_are_grouped_per_image(fake_root):
    split = create_dataset("karpathy", root=str(fake_root)).split("test")
    test_rows = [i for i, (s, _) in enumerate(LAYOUT) if s == "test"]
    assert split.num_items == 3
    assert split.num_captions == sum(LAYOUT[i][1] for i in test_rows)
    for item, row in enumerate(test_rows):
        owned = split.captions_of(item)
        assert [split.captions[c] for c in owned] == [caption(row, j) for j in range(LAYOUT[row][1])]
    assert split.caption_item.dtype == torch.long
    assert split.items[0].endswith(f"img{test_rows[0]}.jpg")


def test_restval_joins_train_only_when_asked(fake_root):
    with_restval = create_dataset("karpathy", root=str(fake_root)).split("train")
    without = create_dataset("karpathy", root=str(fake_root), restval_as_train=False).split("train")
    assert (with_restval.num_items, without.num_items) == (3, 2)
    assert with_restval.num_captions == 12


def test_max_items_takes_the_first_images(fake_root):
    split = create_dataset("flickr8k", root=str(fake_root), max_items=2).split("test")
    assert split.num_items == 2
    assert split.caption_item.tolist() == [0] * 5 + [1] * 3


def test_raw_item_is_an_rgb_image(fake_root):
    split = create_dataset("flickr8k", root=str(fake_root)).split("val")
    image = split.raw_item(0)
    assert image.mode == "RGB" and image.size == (40 + 8 * 3, 40)


def test_filepath_subfolders_are_used(tmp_path):
    root = make_fake_karpathy(tmp_path / "coco", json_name="dataset_coco.json")
    data = json.loads((root / "dataset_coco.json").read_text())
    (root / "images" / "val2014").mkdir()
    for image in data["images"]:
        image["filepath"] = "val2014"
        os.rename(root / "images" / image["filename"], root / "images" / "val2014" / image["filename"])
    (root / "dataset_coco.json").write_text(json.dumps(data))
    split = create_dataset("coco", root=str(root)).split("test")
    assert split.raw_item(1).size[1] == 40
    assert "val2014" in split.items[0]


def test_missing_json_names_the_path(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="dataset_flickr30k.json"):
        create_dataset("flickr30k", root=str(tmp_path))


def test_missing_image_folder_names_the_path(fake_root):
    with pytest.raises(DataError, match=str(fake_root / "pictures")):
        create_dataset("flickr8k", root=str(fake_root), image_dir="pictures")


def test_corrupt_json_names_the_path(fake_root):
    (fake_root / "dataset_flickr8k.json").write_text('{"images": [')
    with pytest.raises(DataError, match="not valid JSON") as info:
        create_dataset("flickr8k", root=str(fake_root)).split("test")
    assert str(fake_root / "dataset_flickr8k.json") in str(info.value)


def test_json_without_images_list(fake_root):
    (fake_root / "dataset_flickr8k.json").write_text('{"annotations": []}')
    with pytest.raises(DataError, match="no 'images' list"):
        create_dataset("flickr8k", root=str(fake_root)).split("test")


def test_missing_image_file_fails_on_load_with_its_path(fake_root):
    split = create_dataset("flickr8k", root=str(fake_root)).split("test")
    os.remove(split.items[1])
    assert split.raw_item(0).mode == "RGB"  # others still load: the check is lazy
    with pytest.raises(DataError, match=split.items[1]):
        split.raw_item(1)


def test_corrupt_image_file_names_its_path(fake_root):
    split = create_dataset("flickr8k", root=str(fake_root)).split("test")
    with open(split.items[0], "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(DataError, match="cannot decode image"):
        split.raw_item(0)


def test_unknown_split_and_bad_options(fake_root):
    data = create_dataset("flickr8k", root=str(fake_root))
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        data.split("dev")
    with pytest.raises(ConfigError, match="max_items"):
        create_dataset("flickr8k", root=str(fake_root), max_items=0)
    assert data.split_names() == ["train", "val", "test", "restval"]


def test_default_root_from_environment(tmp_path, monkeypatch):
    make_fake_karpathy(tmp_path / "flickr8k")
    monkeypatch.setenv("FINEALIGN_DATA_ROOT", str(tmp_path))
    data = create_dataset("flickr8k")
    assert data.root == tmp_path / "flickr8k"


def test_absent_default_root_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(karpathy_module, "default_root", lambda name: None)
    with pytest.raises(DataError, match="finealign download flickr8k --root DIR") as info:
        create_dataset("flickr8k")
    assert "FINEALIGN_DATA_ROOT" in str(info.value)


def test_plain_karpathy_needs_a_root():
    with pytest.raises(ConfigError, match="root="):
        create_dataset("karpathy")


@pytest.mark.realdata
def test_real_flickr8k_splits():
    data = create_dataset("flickr8k", root=str(FLICKR8K))
    test = data.split("test")
    assert (test.num_items, test.num_captions) == (1000, 5000)
    assert torch.equal(torch.bincount(test.caption_item), torch.full((1000,), 5))
    assert data.split("train").num_items == 6000
    small = create_dataset("flickr8k", root=str(FLICKR8K), max_items=8).split("test")
    assert small.raw_item(7).mode == "RGB"
