"""The `features` / `toy` datasets and the `precomputed` encoder."""

import json

import numpy as np
import pytest
import torch

from finealign.data.features import FeatureRows, load_feature_cache
from finealign.errors import ConfigError, DataError, ShapeError
from finealign.registry import create_dataset, create_encoder


@pytest.fixture
def toy():
    return create_dataset("toy", num_train=12, num_val=4, num_test=5, captions_per_item=3, regions=6, words=4)


def test_toy_split_structure(toy):
    split = toy.split("test")
    assert split.num_items == 5 and split.num_captions == 15
    assert split.caption_item.tolist() == [i for i in range(5) for _ in range(3)]
    item = split.raw_item(0)
    assert item["tokens"].shape == (6, 32) and item["mask"].dtype == bool and item["mask"].sum() >= 3
    assert np.all(item["tokens"][~item["mask"]] == 0)
    assert split.meta["vision_dim"] == 32 and split.meta["text_dim"] == 24


def test_toy_is_deterministic_and_splits_differ(toy):
    again = create_dataset("toy", num_train=12, num_val=4, num_test=5, captions_per_item=3, regions=6, words=4)
    np.testing.assert_array_equal(toy.arrays("train")["visual_tokens"], again.arrays("train")["visual_tokens"])
    assert not np.allclose(toy.arrays("train")["visual_tokens"][:4], toy.arrays("val")["visual_tokens"])


def test_feature_cache_round_trip(toy, tmp_path):
    toy.write(tmp_path)
    ds = create_dataset("features", root=str(tmp_path))
    split = ds.split("val")
    ref = toy.arrays("val")
    assert isinstance(split.items, FeatureRows)
    assert isinstance(split.items.tokens, np.memmap)  # memory-mapped, not read into RAM
    np.testing.assert_allclose(split.items[2]["tokens"], ref["visual_tokens"][2], atol=1e-2)
    np.testing.assert_array_equal(split.captions[3]["mask"], ref["text_mask"][3])
    assert split.caption_item.tolist() == ref["caption_item"].tolist()
    assert json.loads((tmp_path / "val" / "meta.json").read_text())["complete"] is True


def test_feature_cache_errors_name_the_path(toy, tmp_path):
    toy.write(tmp_path)
    (tmp_path / "train" / "text_mask.npy").unlink()
    with pytest.raises(DataError, match="text_mask.npy"):
        load_feature_cache(tmp_path / "train")
    meta = json.loads((tmp_path / "val" / "meta.json").read_text())
    (tmp_path / "val" / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(DataError, match="incomplete"):
        load_feature_cache(tmp_path / "val")
    (tmp_path / "test" / "meta.json").write_text(json.dumps({**meta, "num_items": 999}))
    with pytest.raises(DataError, match="visual_tokens.npy"):
        load_feature_cache(tmp_path / "test")
    with pytest.raises(DataError, match="meta.json"):
        load_feature_cache(tmp_path / "nowhere")


def test_features_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="root"):
        create_dataset("features")
    with pytest.raises(ConfigError, match="layout"):
        create_dataset("features", root=str(tmp_path), layout="hdf5")
    with pytest.raises(ConfigError, match="no split 'dev'"):
        create_dataset("features", root=str(tmp_path)).split("dev")


def test_region_layout(tmp_path):
    split_dir = tmp_path / "test"
    split_dir.mkdir()
    feats = np.random.default_rng(0).standard_normal((3, 4, 10)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=bool)
    np.savez(split_dir / "regions.npz", features=feats, mask=mask)
    (split_dir / "captions.json").write_text(
        json.dumps({"captions": ["a", "b", "c", "d"], "caption_item": [0, 1, 2, 2]})
    )
    split = create_dataset("features", root=str(tmp_path), layout="regions").split("test")
    assert split.captions == ["a", "b", "c", "d"] and split.caption_item.tolist() == [0, 1, 2, 2]
    enc = create_encoder("precomputed", in_dim=10, embed_dim=8)
    batch = enc.collate([enc.load(split.raw_item(i)) for i in range(3)])
    assert batch["mask"].sum(1).tolist() == [4, 2, 1]
    (split_dir / "captions.json").unlink()
    with pytest.raises(DataError, match="captions.json"):
        create_dataset("features", root=str(tmp_path), layout="regions").split("test")


def _rows(n=4, length=6, dim=10, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.standard_normal((n, length, dim)).astype(np.float16)
    mask = np.zeros((n, length), dtype=bool)
    for i in range(n):
        mask[i, : 1 + i] = True
    tokens[~mask] = 100.0  # padding must never leak into the output
    return FeatureRows(tokens, mask, rng.standard_normal((n, dim)).astype(np.float16))


@pytest.mark.parametrize("head", ["linear", "mlp", "transformer"])
def test_precomputed_heads_shapes_and_padding_invariance(head):
    torch.manual_seed(0)
    rows = _rows()
    enc = create_encoder("precomputed", in_dim=10, embed_dim=8, head=head, heads=2)
    enc.eval()
    together = enc(enc.collate([enc.load(rows[i]) for i in range(4)]))
    assert together.tokens.shape == (4, 4, 8) and together.pooled.shape == (4, 8)
    assert together.mask.sum(1).tolist() == [1, 2, 3, 4]
    for i in range(4):  # each item alone (no padding) gives the same features
        alone = enc(enc.collate([enc.load(rows[i])]))
        n = i + 1
        torch.testing.assert_close(together.tokens[i, :n], alone.tokens[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(together.pooled[i], alone.pooled[0], atol=1e-5, rtol=1e-5)


def test_precomputed_linear_pooled_is_head_of_pooled_or_masked_mean():
    rows = _rows()
    enc = create_encoder("precomputed", in_dim=10, embed_dim=8, head="linear")
    out = enc(enc.collate([enc.load(rows[i]) for i in range(4)]))
    torch.testing.assert_close(out.pooled, enc.proj(torch.as_tensor(rows.pooled.astype(np.float32))))
    bare = enc(enc.collate([enc.load(rows[i]["tokens"][: i + 1]) for i in range(4)]))  # no pooled given
    torch.testing.assert_close(bare.pooled, bare.mean_pooled())


def test_precomputed_errors():
    with pytest.raises(ConfigError, match="in_dim"):
        create_encoder("precomputed", embed_dim=8)
    with pytest.raises(ConfigError, match="head"):
        create_encoder("precomputed", in_dim=4, head="lstm")
    with pytest.raises(ConfigError, match="divide"):
        create_encoder("precomputed", in_dim=4, embed_dim=10, head="transformer", heads=4)
    enc = create_encoder("precomputed", in_dim=4, embed_dim=8)
    with pytest.raises(ShapeError, match="no real token"):
        enc.load({"tokens": np.ones((3, 4)), "mask": np.zeros(3, dtype=bool)})
    with pytest.raises(ShapeError, match="in_dim"):
        enc(enc.collate([enc.load(np.ones((2, 5)))]))
