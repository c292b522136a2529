import io
import zipfile

import pytest

from finealign.cli.main import main
from finealign.data import download as dl
from finealign.errors import ConfigError, DataError


def test_url_table_is_public_and_complete():
    assert set(dl.PLANS) == {"flickr8k", "flickr30k", "coco", "msrvtt"}
    for name in dl.PLANS:
        plan = dl.download_plan(name, "/data/x")
        for remote in plan.remote:
            assert remote.url.startswith(("https://", "http://")) and remote.url.endswith(".zip")
    assert dl.download_plan("flickr8k", "/d").remote[0].url == dl.KARPATHY_ZIP
    assert dl.download_plan("msrvtt", "/d").remote[0].members == (
        "MSRVTT_data.json",
        "MSRVTT_train.9k.csv",
        "MSRVTT_JSFUSION_test.csv",
    )


@pytest.mark.parametrize(
    "name, expected",
    [
        ("flickr8k", ["dataset_flickr8k.json", "/data/f8/images/", "forms.illinois.edu"]),
        ("flickr30k", ["dataset_flickr30k.json", "/data/f8/images/", "DenotationGraph"]),
        ("coco", ["dataset_coco.json", "train2014.zip", "/data/f8/images/val2014"]),
        ("msrvtt", ["MSRVTT_data.json", "/data/f8/frames/<video_id>", "ffmpeg", "features/<video_id>.npy"]),
    ],
)
def test_plans_say_where_files_go(name, expected):
    text = dl.download_plan(name, "/data/f8").describe()
    for piece in expected:
        assert piece in text, piece


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="no download recipe"):
        dl.download_plan("imagenet", "/d")


def _fake_fetch(members):
    def fetch(url, dest):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, text in members.items():
                zf.writestr(name, text)
        dest.write_bytes(buf.getvalue())

    return fetch


def test_download_extracts_only_the_needed_member(tmp_path):
    fetch = _fake_fetch({"data/dataset_flickr8k.json": "{}", "data/dataset_coco.json": "{}"})
    dl.download("flickr8k", tmp_path, fetch=fetch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset_flickr8k.json"]


def test_download_reports_a_member_the_archive_lacks(tmp_path):
    with pytest.raises(DataError, match="did not contain"):
        dl.download("flickr8k", tmp_path, fetch=_fake_fetch({"other.json": "{}"}))


def test_cli_dry_run_prints_the_plan(tmp_path, capsys):
    assert main(["download", "msrvtt", "--root", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "frames") in out and dl.MSRVTT_ANNOTATIONS_ZIP in out
