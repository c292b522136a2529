import json

import numpy as np
import pytest
from PIL import Image

from finealign.errors import ConfigError, DataError
from finealign.registry import create_dataset


def make_msrvtt(root, with_lists=True, frames=True, features_dim=0):
    root.mkdir(parents=True)
    videos = [
        {"video_id": f"video{i}", "split": "train" if i < 4 else ("validate" if i == 4 else "test")} for i in range(7)
    ]
    sentences = [{"video_id": f"video{i}", "caption": f"clip {i} caption {j}"} for i in range(7) for j in range(3)]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    if with_lists:
        (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo2\nvideo3\n")
        (root / "MSRVTT_JSFUSION_test.csv").write_text(
            "key,vid_key,video_id,sentence\nret0,msr5,video5,a chosen caption\nret1,msr6,video6,another one\n"
        )
    if frames:
        for i in range(7):
            folder = root / "frames" / f"video{i}"
            folder.mkdir(parents=True)
            for k in range(i + 1):
                Image.new("RGB", (16, 16), (10 * k, 0, 0)).save(folder / f"{k:04d}.jpg")
    if features_dim:
        (root / "features").mkdir()
        for i in range(7):
            np.save(root / "features" / f"video{i}.npy", np.full((i + 2, features_dim), i, dtype=np.float32))
    return root


def test_csv_lists_define_train_9k_and_test_1k_a(tmp_path):
    data = create_dataset("msrvtt", root=str(make_msrvtt(tmp_path / "m")))
    train = data.split("train")
    assert train.items == ["video0", "video2", "video3"]
    assert train.num_captions == 9 and train.captions_of(1) == [3, 4, 5]
    test = data.split("test")
    # 1K-A: one caption per test video, the one the csv names.
    assert test.items == ["video5", "video6"] and test.captions == ["a chosen caption", "another one"]


def test_json_split_field_without_lists(tmp_path):
    data = create_dataset("msrvtt", root=str(make_msrvtt(tmp_path / "m", with_lists=False)))
    assert data.split("train").items == ["video0", "video1", "video2", "video3"]
    assert data.split("val").items == ["video4"]
    test = data.split("test")
    assert test.items == ["video5", "video6"] and test.num_captions == 6


def test_frames_load_in_order_and_missing_frames_name_the_folder(tmp_path):
    root = make_msrvtt(tmp_path / "m")
    split = create_dataset("msrvtt", root=str(root)).split("test")
    frames = split.raw_item(1)
    assert [p.name for p in frames] == [f"{k:04d}.jpg" for k in range(7)]
    for p in (root / "frames" / "video5").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=str(root / "frames" / "video5")):
        split.raw_item(0)


def test_feature_source(tmp_path):
    root = make_msrvtt(tmp_path / "m", frames=False, features_dim=6)
    split = create_dataset("msrvtt", root=str(root), source="features", max_items=1).split("train")
    feats = split.raw_item(0)
    assert feats.shape == (2, 6) and split.num_items == 1
    (root / "features" / "video0.npy").unlink()
    with pytest.raises(DataError, match="video0.npy"):
        split.raw_item(0)


def test_msrvtt_errors(tmp_path):
    root = make_msrvtt(tmp_path / "m", frames=False)
    with pytest.raises(DataError, match="frames folder not found"):
        create_dataset("msrvtt", root=str(root))
    with pytest.raises(ConfigError, match="source"):
        create_dataset("msrvtt", root=str(root), source="video")
    with pytest.raises(DataError, match="MSRVTT_data.json"):
        create_dataset("msrvtt", root=str(tmp_path))
    (root / "frames").mkdir()
    (root / "MSRVTT_data.json").write_text('{"videos": []}')
    with pytest.raises(DataError, match="MSRVTT_data.json layout"):
        create_dataset("msrvtt", root=str(root), train_list=None).split("train")
