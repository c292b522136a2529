"""`--cfg job|hydra|all` (and `--resolve`) on `finealign bench` and `finealign explain`, as on train/eval:
print what would run, run nothing."""

import torch
import yaml
from omegaconf import OmegaConf

from finealign.cli.main import main as cli_main
from finealign.config import compose


def test_bench_cfg_prints_each_methods_base_run_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # one call (each composes every method): --cfg all is the job's configs and Hydra's node
    assert (
        cli_main(["bench", "--cfg", "all", "protocol=toy", "--methods", "global,hard", "seed=5", "--out", "here"]) == 0
    )
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert list(printed) == ["global", "hard", "hydra"] and "tuned (shown at their defaults): train.lr" in out
    assert printed["hard"]["aligner"]["name"] == "hard" and printed["global"]["aligner"]["name"] == "global"
    assert printed["hard"]["eval"]["split"] == "val" and printed["hard"]["seed"] == 5  # a tuning trial's run
    assert printed["hydra"]["sweep"]["dir"] == "here" and printed["hydra"]["mode"] == "MULTIRUN"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "here").exists()


def test_explain_cfg_prints_the_checkpoints_config_with_overrides_and_draws_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    cfg = OmegaConf.to_container(compose("config", ["data=toy", "encoder=toy", "aligner=hard"]))
    torch.save({"config": cfg, "model": {}, "data_meta": {}}, run / "model.pt")  # the checkpoint's config only
    ckpt = f"ckpt={run / 'model.pt'}"
    assert cli_main(["explain", "--cfg", "job", ckpt, "image=0", "eval.split=val"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["aligner"]["name"] == "hard" and printed["eval"]["split"] == "val"
    assert cli_main(["explain", "--cfg", "all", ckpt]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["hydra"]["run"]["dir"] == str(run / "explain") and printed["data"]["name"] == "toy"
    assert cli_main(["explain", "--cfg", "hydra", ckpt, "--out", "pics/a.png"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {
        "hydra": {"run": {"dir": "pics"}, "sweep": {"dir": "multirun/<date>/<time>"}}
    }
    assert not (run / "explain").exists() and not (tmp_path / "pics").exists()
