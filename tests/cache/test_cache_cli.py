import pytest

from finealign.cache import is_complete
from finealign.cli.cache_cmd import parse_overrides
from finealign.cli.main import main
from finealign.errors import ConfigError
from tests.data.fake_karpathy import make_fake_karpathy


def test_parse_overrides():
    settings, options = parse_overrides(
        ["data=coco", "split=test,val", "batch_size=8", "data.max_items=4", "vision.freeze=true", "text.pooling=cls"]
    )
    assert settings["data"] == "coco" and settings["split"] == "test,val" and settings["batch_size"] == 8
    assert options == {"data": {"max_items": 4}, "vision": {"freeze": True}, "text": {"pooling": "cls"}}
    with pytest.raises(ConfigError, match="unknown setting 'batchsize'"):
        parse_overrides(["batchsize=8"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["data"])
    with pytest.raises(ConfigError, match="unknown option group 'model'"):
        parse_overrides(["model.depth=3"])


def test_cache_command_builds_every_split(tmp_path, tiny_bert_dir, capsys):
    root = make_fake_karpathy(tmp_path / "flickr8k")
    code = main([
        "cache", f"data.root={root}", "split=test,val", "vision=timm", "vision.model_name=test_resnet",
        "vision.pretrained=false", "text=hf_text", f"text.model_name_or_path={tiny_bert_dir}",
        f"cache_dir={tmp_path / 'cache'}", "batch_size=4",
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert "flickr8k/test: 3 items, 13 captions" in out and "flickr8k/val: 1 items, 5 captions" in out
    entries = [p for p in (tmp_path / "cache").iterdir()]
    assert len(entries) == 2 and all(is_complete(p) for p in entries)


def test_cache_command_reports_data_errors(tmp_path, capsys):
    assert main(["cache", f"data.root={tmp_path / 'none'}", f"cache_dir={tmp_path}"]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_cache_command_prints_features_dataset_overrides(tmp_path, tiny_bert_dir, capsys):
    root = make_fake_karpathy(tmp_path / "flickr8k")
    main([
        "cache", f"data.root={root}", "split=val", "vision=timm", "vision.model_name=test_resnet",
        "vision.pretrained=false", "text=hf_text", f"text.model_name_or_path={tiny_bert_dir}",
        f"cache_dir={tmp_path / 'cache'}",
    ])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    entry = next((tmp_path / "cache").iterdir())
    assert line == f"use with: data=features data.splits.val={entry}"
