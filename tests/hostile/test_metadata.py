"""Files that point outside, and stored data that changed (issue 26): a file name read from metadata
stays inside its folder (cache meta.json, gallery manifest, dataset annotations), and a gallery
has the cache's integrity model — sizes, SHA-256, `finealign search verify`, items checked at build."""

import json
import os

import numpy as np
import pytest
import torch

from finealign.cli.main import main as cli_main
from finealign.data.features import load_feature_cache, write_feature_cache
from finealign.errors import ConfigError, DataError, ShapeError
from finealign.formats.feature_cache import open_checked, verify_entry
from finealign.safe_paths import confined, escapes
from finealign.tokens import TokenBatch

pytest.importorskip("faiss")

from finealign.ann import IndexSpec  # noqa: E402
from finealign.search import Gallery, verify_gallery, write_gallery  # noqa: E402


# -- the one rule ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["/etc/passwd", "../x.npy", "a/../../x", "C:\\x", "", None, "a\x00b"])
def test_names_that_leave_their_folder_are_refused(tmp_path, name):
    assert escapes(name)
    with pytest.raises(DataError, match="inside|outside"):
        confined(tmp_path, name, "test metadata")


def test_a_symlink_inside_the_folder_that_leads_out_is_refused(tmp_path):
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "link.npy").symlink_to("/etc/hostname")
    assert not escapes("link.npy")
    assert confined(tmp_path / "inner", "ok.npy", "m") == tmp_path / "inner" / "ok.npy"
    with pytest.raises(DataError, match="resolves to /etc/hostname"):
        confined(tmp_path / "inner", "link.npy", "test metadata")


# -- a feature cache entry ------------------------------------------------------------------------
def _entry(folder, n=4, m=8):
    g = np.random.default_rng(0)
    return write_feature_cache(
        folder, visual_tokens=g.normal(size=(n, 3, 4)), visual_mask=np.ones((n, 3), bool),
        visual_pooled=g.normal(size=(n, 4)), text_tokens=g.normal(size=(m, 2, 4)), text_mask=np.ones((m, 2), bool),
        text_pooled=g.normal(size=(m, 4)), caption_item=np.arange(m) % n,
    )  # fmt: skip


@pytest.mark.parametrize("outside", ["/etc/passwd", "../../../etc/passwd"])
def test_a_cache_meta_naming_a_file_outside_is_damaged_and_that_file_is_never_opened(tmp_path, monkeypatch, outside):
    entry = _entry(tmp_path / "entry")
    meta = json.loads((entry / "meta.json").read_text())
    meta["arrays"][outside] = meta["arrays"].pop("visual_tokens.npy")
    (entry / "meta.json").write_text(json.dumps(meta))
    opened = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: (opened.append(str(p)), real_stat(p, *a, **k))[1])
    with pytest.raises(DataError, match="outside its folder"):
        load_feature_cache(entry)  # what training opens
    status, problems = verify_entry(entry)  # what `finealign cache --verify` runs
    assert status == "damaged" and any("outside its folder" in p for p in problems)
    assert any("records nothing for visual_tokens.npy" in p for p in problems)
    assert not [p for p in opened if p.endswith("passwd")]


def test_a_cache_meta_dropping_an_array_record_cannot_skip_its_check(tmp_path):
    entry = _entry(tmp_path / "entry")
    meta = json.loads((entry / "meta.json").read_text())
    del meta["arrays"]["text_tokens.npy"]
    (entry / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="records nothing for text_tokens.npy"):
        open_checked(entry)


# -- a gallery --------------------------------------------------------------------------------------
def _gallery(tmp_path, name="g", n=20, indexes=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, 5, 8, generator=g).half().numpy()
    mask = np.ones((n, 5), bool)
    mask[::3, 3:] = False
    folder = write_gallery(tmp_path / name, tokens, mask, None, modality="text", feature_source="test",
                           indexes=indexes or {"flat": IndexSpec("flat")})  # fmt: skip
    return folder


def _queries(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return TokenBatch(torch.randn(n, 4, 8, generator=g), torch.ones(n, 4, dtype=torch.bool))


def _edit_manifest(folder, edit):
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("outside", ["/etc/hostname", "../../etc/hostname", "../other/index-flat.faiss"])
def test_a_manifest_naming_an_index_outside_the_gallery_is_refused(tmp_path, outside):
    folder = _gallery(tmp_path)
    other = _gallery(tmp_path, "other")
    assert (other / "index-flat.faiss").is_file()
    _edit_manifest(folder, lambda m: m["indexes"]["flat"].update(file=outside))
    with pytest.raises(DataError, match="relative path inside|outside"):
        Gallery(folder)
    assert verify_gallery(folder)[0] == "damaged"


def test_a_manifest_naming_an_array_outside_the_gallery_is_refused(tmp_path):
    folder = _gallery(tmp_path)
    _edit_manifest(folder, lambda m: m["arrays"].update({"/etc/hostname": m["arrays"].pop("tokens.npy")}))
    with pytest.raises(DataError, match="outside its folder"):
        Gallery(folder)


def test_an_overwritten_tokens_file_of_the_same_size_is_found_on_open_and_by_verify(tmp_path, capsys):
    folder = _gallery(tmp_path)
    assert verify_gallery(folder) == ("ok", [])
    tokens = np.load(folder / "tokens.npy", mmap_mode="r+")
    tokens[3] = tokens[3] * 2  # same size, shape and dtype: only the checksum tells
    tokens.flush()
    del tokens
    with pytest.raises(DataError, match="tokens.npy: SHA-256 differs"):
        Gallery(folder)
    assert cli_main(["search", "verify", str(folder)]) == 1
    assert "damaged" in capsys.readouterr().out


@pytest.mark.parametrize("tamper", ["swap", "bytes"])
def test_a_swapped_or_tampered_index_is_a_named_error(tmp_path, tamper):
    folder = _gallery(tmp_path)
    index = folder / "index-flat.faiss"
    if tamper == "swap":  # another gallery's index of the same size
        other = _gallery(tmp_path, "other", seed=1) / "index-flat.faiss"
        assert other.stat().st_size == index.stat().st_size and other.read_bytes() != index.read_bytes()
        index.write_bytes(other.read_bytes())
    else:
        raw = bytearray(index.read_bytes())
        raw[:8] = b"garbage!"  # the FAISS header
        index.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="SHA-256 differs|cannot be read"):
        Gallery(folder)
    _edit_manifest(folder, lambda m: m["indexes"]["flat"].pop("sha256"))  # a gallery too large to hash on open
    if tamper == "bytes":
        with pytest.raises(DataError, match="index 'flat' cannot be read"):
            Gallery(folder)
    assert verify_gallery(folder)[0] in ("damaged", "unverifiable")


def test_tampered_offsets_are_named_before_any_read(tmp_path):
    folder = _gallery(tmp_path)
    offsets = np.load(folder / "offsets.npy")
    offsets[5], offsets[6] = offsets[6], offsets[5]  # same size and dtype, an item with < 1 token
    np.save(folder / "offsets.npy", offsets)
    _edit_manifest(folder, lambda m: m["arrays"]["offsets.npy"].pop("sha256"))  # only the offsets check is left
    with pytest.raises(DataError, match="offsets.npy gives item"):
        Gallery(folder)


def test_items_are_checked_at_build_nan_and_token_less_items_are_refused(tmp_path):
    tokens = np.ones((4, 3, 8), np.float16)
    mask = np.ones((4, 3), bool)
    mask[2] = False
    with pytest.raises(DataError, match="item 2 has no real token"):
        write_gallery(tmp_path / "a", tokens, mask, None, modality="text", feature_source="t", indexes={})
    mask[2] = True
    tokens[1, 0, 0] = np.nan
    with pytest.raises(DataError, match="item 1 holds NaN"):
        write_gallery(tmp_path / "b", tokens, mask, None, modality="text", feature_source="t", indexes={})
    tokens[1, 0, 0] = 1.0
    tokens[1, 2, 0] = np.nan  # NaN in padding is not stored: fine
    mask[1, 2] = False
    write_gallery(tmp_path / "c", tokens, mask, None, modality="text", feature_source="t", indexes={})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the refused builds left nothing


def test_a_nan_query_is_refused_not_silently_dropped(tmp_path):
    gallery = Gallery(_gallery(tmp_path))
    queries = _queries()
    assert gallery.query(queries, 3).ids.shape == (2, 3)
    queries.tokens[1, 0, 0] = float("nan")
    with pytest.raises(ShapeError, match="NaN/inf"):
        gallery.query(queries, 3)


def test_a_build_time_knob_at_query_time_is_refused_not_ignored(tmp_path):
    folder = _gallery(tmp_path, n=80, indexes={"ivf": IndexSpec("ivf", ivf_lists=2)})
    Gallery(folder, knobs={"ivf_probe": 2})  # a query-time knob is fine
    with pytest.raises(ConfigError, match="ivf_lists: fixed when index 'ivf' was built"):
        Gallery(folder, knobs={"ivf_lists": 4})
    with pytest.raises(ConfigError, match="hnsw_ef_search: index 'ivf' is 'ivf' and has no such knob"):
        Gallery(folder, knobs={"hnsw_ef_search": 64})


def test_search_verify_on_a_good_gallery_and_a_missing_folder(tmp_path, capsys):
    folder = _gallery(tmp_path)
    assert cli_main(["search", "verify", str(folder)]) == 0
    assert capsys.readouterr().out.startswith("ok")
    assert cli_main(["search", "verify", str(tmp_path / "nowhere")]) == 2
    assert "is not a gallery folder (missing)" in capsys.readouterr().err


# -- datasets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("video_id", ["../../etc", "/etc", "frames/../../x"])
def test_a_video_id_that_would_leave_the_media_folder_is_refused(tmp_path, video_id):
    from finealign.registry import create_dataset
    from tests.data.test_msrvtt import make_msrvtt

    root = make_msrvtt(tmp_path / "m", with_lists=False)
    data = json.loads((root / "MSRVTT_data.json").read_text())
    data["videos"][5]["video_id"] = video_id
    data["sentences"].append({"video_id": video_id, "caption": "a caption"})
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"is not a plain name inside"):
        create_dataset("msrvtt", root=str(root)).split("test")
