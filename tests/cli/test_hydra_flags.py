"""Hydra's command-line habits on `finealign train`: --cfg, --info, -m with comma lists,
hydra.run.dir / hydra.sweep.dir, and the .hydra/ record in every run directory."""

import pytest
import yaml

from finealign.cli.main import main as cli_main
from finealign.errors import ConfigError
from finealign.overrides import expand_sweeps

TINY = ["train=quick", "train.epochs=1", "data.num_train=32", "data.num_val=16", "data.num_test=16", "device=cpu",
        "train.progress=false", "eval.progress=false"]  # fmt: skip


def test_cfg_job_prints_the_config_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", "--cfg", "job", "aligner=hard"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["aligner"]["name"] == "hard" and not (tmp_path / "runs").exists()
    assert cli_main(["train", "--info"]) == 0
    assert "aligner: cross_attention, global, hard" in capsys.readouterr().out


def test_multirun_runs_every_combination_in_its_own_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", "-m", "aligner=global,mean_max", *TINY, "hydra.sweep.dir=sweep"]) == 0
    for i, aligner in enumerate(("global", "mean_max")):
        run = tmp_path / "sweep" / str(i)
        assert (run / "results.json").is_file()
        assert f"aligner={aligner}" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["aligner"]["name"] == aligner


def test_hydra_run_dir_is_honoured_and_other_hydra_keys_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", *TINY, "hydra.run.dir=mine"]) == 0
    assert (tmp_path / "mine" / "results.json").is_file()
    assert cli_main(["train", *TINY, "hydra.job.chdir=true"]) == 2
    assert "hydra.run.dir, hydra.sweep.dir and hydra.searchpath" in capsys.readouterr().err


def test_sweeps_expand_by_hydras_grammar():
    assert expand_sweeps(["seed=0,1,2"]) == [["seed=0"], ["seed=1"], ["seed=2"]]
    assert expand_sweeps(["x=[1,2],[3]", "t='a,b'"]) == [["x=[1,2]", "t='a,b'"], ["x=[3]", "t='a,b'"]]
    assert expand_sweeps(["a=1,2", "+b=range(0,2)"]) == [
        ["a=1", "+b=0"],
        ["a=1", "+b=1"],
        ["a=2", "+b=0"],
        ["a=2", "+b=1"],
    ]
    with pytest.raises(ConfigError, match="finealign sweep"):
        expand_sweeps(["lr=interval(0.1,0.2)"])


def test_cfg_job_on_eval_and_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["eval", "--cfg", "job", "aligner=hard", "data=toy"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["aligner"]["name"] == "hard"
    assert cli_main(["sweep", "--cfg", "job", "sweep=toy", "train.lr=0.01"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sweep"]["study"] == "toy" and "train.lr=0.01" in printed["trial_overrides"]
    assert not (tmp_path / "runs").exists()


def test_eval_multirun_and_run_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", *TINY, "hydra.run.dir=trained"]) == 0
    ckpt = tmp_path / "trained" / "model.pt"
    assert cli_main(["eval", "-m", f"ckpt={ckpt}", "aligner=global,mean_max", "eval.progress=false",
                     "hydra.sweep.dir=evals"]) == 0  # fmt: skip
    for i, aligner in enumerate(("global", "mean_max")):
        run = tmp_path / "evals" / str(i)
        assert (run / "results.json").is_file()
        assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["aligner"]["name"] == aligner
        assert f"ckpt={ckpt}" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    record = yaml.safe_load((tmp_path / "evals" / "multirun.yaml").read_text())  # the checkpoint's config
    assert record["hydra"]["job"]["name"] == "eval" and record["aligner"]["name"] == "global"
    assert cli_main(["eval", f"ckpt={ckpt}", "eval.progress=false", "hydra.run.dir=one"]) == 0
    assert (tmp_path / "one" / "results.json").is_file()


def test_profile_and_cache_take_hydra_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["profile", "--cfg", "job", "nv=7", "mean_max.direction=both"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["nv"] == 7 and printed["mean_max"]["direction"] == "both" and "hard" in printed
    args = ["aligners=global", "nv=2", "nt=4", "lv=2", "lt=2", "dim=4", "repeats=1", "warmup=0", "scaling=none",
            "trace=false", "flops=false", "progress=false"]  # fmt: skip
    assert cli_main(["profile", "-m", "dtype=fp32,fp64", *args, "hydra.sweep.dir=prof"]) == 0
    assert all((tmp_path / "prof" / str(i) / "profile.csv").is_file() for i in (0, 1))
    record = yaml.safe_load((tmp_path / "prof" / "multirun.yaml").read_text())  # as train -m leaves it
    assert record["hydra"]["mode"] == "MULTIRUN" and record["hydra"]["job"]["name"] == "profile"
    assert "dtype=fp32,fp64" in record["hydra"]["overrides"]["task"] and record["dtype"] == "fp32"
    assert cli_main(["profile", *args, "hydra.run.dir=one"]) == 0
    assert (tmp_path / "one" / "profile.csv").is_file()
    capsys.readouterr()
    assert cli_main(["cache", "--cfg", "job", "splits=[test,val]", "vision_options.image_size=160"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["splits"] == ["test", "val"] and printed["vision_options"] == {"image_size": 160}
    assert cli_main(["cache", "--info"]) == 0 and "Config search path" in capsys.readouterr().out
