"""Hydra's command-line habits on `finealign train`: --cfg, --info, -m with comma lists,
hydra.run.dir / hydra.sweep.dir, and the .hydra/ record in every run directory."""

import yaml

from finealign.cli.hydra_flags import split_choices
from finealign.cli.main import main as cli_main

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
    assert "hydra.run.dir and hydra.sweep.dir" in capsys.readouterr().err


def test_comma_lists_keep_brackets_and_quotes_whole():
    assert split_choices("seed=0,1,2") == ["seed=0", "seed=1", "seed=2"]
    assert split_choices("x=[1,2],[3]") == ["x=[1,2]", "x=[3]"]
    assert split_choices("t='a,b'") == ["t='a,b'"]


def test_cfg_job_on_eval_and_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["eval", "--cfg", "job", "aligner=hard", "data=toy"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["aligner"]["name"] == "hard"
    assert cli_main(["sweep", "--cfg", "job", "sweep=toy", "train.lr=0.01"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sweep"]["study"] == "toy" and "train.lr=0.01" in printed["trial_overrides"]
    assert not (tmp_path / "runs").exists()
