"""Hydra's own front end under finealign's layer: a personal config folder on the search path
(--config-dir, hydra.searchpath), unknown `+key` refused, did-you-mean for a group choice, and
the run records Hydra leaves (.hydra/hydra.yaml, multirun.yaml, the job log file)."""

import pytest
import yaml

from finealign.cli.main import main as cli_main
from finealign.config import compose
from tests.cli.test_hydra_flags import TINY


def my_configs(tmp_path):
    folder = tmp_path / "my_configs"
    (folder / "aligner").mkdir(parents=True)
    (folder / "aligner" / "my.yaml").write_text("name: hard\npooling: mean\ntemperature: 0.3\n")
    return folder


def test_config_dir_and_searchpath_add_a_personal_config_folder(tmp_path, monkeypatch, capsys):
    folder = my_configs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", "--cfg", "job", "--config-dir", str(folder), "aligner=my"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["aligner"] == {"name": "hard", "pooling": "mean", "temperature": 0.3}
    assert cli_main(["train", "--cfg", "job", f"hydra.searchpath=[file://{folder}]", "aligner=my"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["aligner"]["temperature"] == 0.3
    assert cli_main(["train", "--info", "-cd", str(folder)]) == 0
    assert str(folder.resolve()) in capsys.readouterr().out
    assert cli_main(["train", "--cfg", "job", "aligner=my"]) == 2  # not on the search path without the flag
    assert cli_main(["train", "--cfg", "job", "--config-dir", str(tmp_path / "nope"), "aligner=my"]) == 2
    assert "--config-dir" in capsys.readouterr().err


def test_unknown_added_key_is_refused_with_close_matches(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", "--cfg", "job", "+foo=1"]) == 2
    assert "'+foo=1' adds the key 'foo'" in capsys.readouterr().err
    assert cli_main(["train", "--cfg", "job", "+trian.epochs=3"]) == 2
    assert "Did you mean 'train.epochs'" in capsys.readouterr().err
    # where the schema takes new keys: a free-form *_options dict; ++ on an existing key sets it
    cfg = compose(overrides=["aligner=two_stage", "+aligner.first_stage_options.ivf_probe=8", "++seed=3"])
    assert cfg.aligner.first_stage_options.ivf_probe == 8 and cfg.seed == 3


def test_a_mistyped_group_choice_gets_did_you_mean(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", "--cfg", "job", "aligner=meanmax"]) == 2
    assert "Did you mean 'mean_max'" in capsys.readouterr().err


def test_runs_leave_hydra_yaml_a_job_log_and_multirun_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", "-m", "aligner=global,mean_max", *TINY, "hydra.sweep.dir=sweep"]) == 0
    multirun = yaml.safe_load((tmp_path / "sweep" / "multirun.yaml").read_text())
    assert (
        multirun["hydra"]["mode"] == "MULTIRUN" and "aligner=global,mean_max" in multirun["hydra"]["overrides"]["task"]
    )
    for i, aligner in enumerate(("global", "mean_max")):
        run = tmp_path / "sweep" / str(i)
        record = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert record["runtime"]["choices"]["aligner"] == aligner and record["job"]["name"] == "train"
        assert f"aligner={aligner}" in record["overrides"]["task"] and record["run"]["dir"] == f"sweep/{i}"
        log = (run / "train.log").read_text()
        assert "INFO" in log and "epoch" in log.lower()


def test_eval_of_a_checkpoint_finds_group_files_in_the_config_dir(tmp_path, monkeypatch, capsys):
    folder = my_configs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", *TINY, "hydra.run.dir=trained"]) == 0
    capsys.readouterr()
    ckpt = tmp_path / "trained" / "model.pt"
    assert cli_main(["eval", "--cfg", "job", "--config-dir", str(folder), f"ckpt={ckpt}", "aligner=my"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["aligner"]["temperature"] == 0.3 and "hydra" not in printed


def test_overrides_may_follow_a_flag_as_in_hydra(tmp_path, monkeypatch, capsys):
    folder = my_configs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", "--cfg", "job", "seed=4", "--config-dir", str(folder), "aligner=my", "train.lr=0.5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["aligner"]["name"] == "hard" and printed["seed"] == 4 and printed["train"]["lr"] == 0.5
    with pytest.raises(SystemExit):
        cli_main(["train", "--cfg", "job", "--config-dir", str(folder), "aligner=my", "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
