import pytest

from finealign.cache import is_complete
from finealign.cli.cache_cmd import read_settings
from finealign.cli.main import main
from finealign.errors import ConfigError
from tests.data.fake_karpathy import make_fake_karpathy


def test_settings_compose_by_hydras_grammar():
    _, _, settings = read_settings(["dataset=coco", "splits=[test,val]", "batch_size=8", "dataset_options.max_items=4",
                                 "vision_options.freeze=true", "text_options.pooling=cls"])  # fmt: skip
    assert settings.dataset == "coco" and settings.splits == ["test", "val"] and settings.batch_size == 8
    assert settings.dataset_options == {"max_items": 4} and settings.vision_options == {"freeze": True}
    assert settings.text_options == {"pooling": "cls"}
    with pytest.raises(ConfigError, match="Did you mean 'batch_size'"):
        read_settings(["batchsize=8"])
    with pytest.raises(ConfigError, match="batch_size must be a positive int"):
        read_settings(["batch_size=0"])
    with pytest.raises(ConfigError, match="splits must be a non-empty list"):
        read_settings(["splits=[]"])


def test_cache_command_builds_every_split(tmp_path, tiny_bert_dir, capsys):
    root = make_fake_karpathy(tmp_path / "flickr8k")
    code = main(
        [
            "cache",
            f"dataset_options.root={root}",
            "splits=[test,val]",
            "vision=timm",
            "vision_options.model_name=test_resnet",
            "vision_options.pretrained=false",
            "text=hf_text",
            f"text_options.model_name_or_path={tiny_bert_dir}",
            f"cache_dir={tmp_path / 'cache'}",
            "batch_size=4",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "flickr8k/test: 3 items, 13 captions" in out and "flickr8k/val: 1 items, 5 captions" in out
    entries = [p for p in (tmp_path / "cache").iterdir()]
    assert len(entries) == 2 and all(is_complete(p) for p in entries)


def test_cache_command_reports_data_errors(tmp_path, capsys):
    assert main(["cache", f"dataset_options.root={tmp_path / 'none'}", f"cache_dir={tmp_path}"]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_cache_command_prints_features_dataset_overrides(tmp_path, tiny_bert_dir, capsys):
    root = make_fake_karpathy(tmp_path / "flickr8k")
    main(
        [
            "cache",
            f"dataset_options.root={root}",
            "splits=val",
            "vision=timm",
            "vision_options.model_name=test_resnet",
            "vision_options.pretrained=false",
            "text=hf_text",
            f"text_options.model_name_or_path={tiny_bert_dir}",
            f"cache_dir={tmp_path / 'cache'}",
        ]
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    entry = next((tmp_path / "cache").iterdir())
    assert line == f"use with: data=features data.splits.val={entry}"
