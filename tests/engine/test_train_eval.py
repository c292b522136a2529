"""End to end on the toy data: train a few epochs, evaluate, save, resume, re-evaluate."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from finealign.cli.main import main as cli_main
from finealign.config import compose
from finealign.engine.checkpoint import load_checkpoint
from finealign.engine.experiment import evaluate_checkpoint, run_experiment
from finealign.errors import ConfigError

RESULT_KEYS = {
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "rsum",
    "i2t_medr",
    "t2i_medr",
    "i2t_meanr",
    "t2i_meanr",
    "score_latency_ms",
    "train_peak_mem_mb",
    "process_peak_rss_mb",
    "train_time_s",
    "final_loss",
}


def toy_overrides(out, *extra):
    return [
        "train=quick",
        f"output_dir={out}",
        "train.progress=false",
        "eval.progress=false",
        "device=cpu",
        "data.num_train=192",
        "data.num_val=48",
        "data.num_test=48",
        "encoder.embed_dim=32",
        "train.batch_size=32",
        *extra,
    ]


@pytest.mark.parametrize("aligner,loss", [("mean_max", "infonce"), ("global", "triplet"), ("mean_max", "cmc")])
def test_training_lowers_loss_and_lifts_recall_above_chance(tmp_path, aligner, loss):
    reports = []
    cfg = compose(
        overrides=toy_overrides(
            tmp_path,
            f"aligner={aligner}",
            f"loss={loss}",
            "train.epochs=4",
            "eval.split=train",
            "loss.warmup_epochs=1" if loss == "triplet" else "seed=0",
        )
    )
    result = run_experiment(cfg, on_validation=lambda epoch, metrics: reports.append((epoch, metrics)))
    assert RESULT_KEYS <= set(result)
    saved = json.loads((tmp_path / "results.json").read_text())
    losses = saved["epoch_losses"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    # Evaluated on the 192 training images (384 captions): chance R@1 is ~0.5 %.
    assert result["i2t_r1"] > 10 and result["t2i_r1"] > 10
    assert [e for e, _ in reports] == [0, 1, 2, 3]
    assert reports[-1][1]["rsum"] > reports[0][1]["rsum"] or reports[0][1]["rsum"] > 500
    row = pd.read_csv(tmp_path / "results.csv")
    assert row.loc[0, "aligner"] == aligner and row.loc[0, "loss"] == loss
    assert row.loc[0, "rsum"] == pytest.approx(result["rsum"])


def test_untrained_model_is_near_chance(tmp_path):
    cfg = compose(
        overrides=toy_overrides(
            tmp_path, "train.max_steps=1", "train.lr=1e-9", "train.warmup_steps=0", "train.epochs=1"
        )
    )
    result = run_experiment(cfg)
    assert result["rsum"] < 200  # chance R@10 on 48 images is ~21 %: a trained model is far above


def test_resume_after_interruption_continues_identically(tmp_path):
    extra = (
        "train.epochs=3",
        "train.checkpoint=true",
        "train.select=last",
        "train.save_model=true",
        "encoder.vision.head=mlp",
        "encoder.vision.dropout=0.2",
    )  # dropout: the RNG state matters
    straight = run_experiment(compose(overrides=toy_overrides(tmp_path / "a", *extra)))

    class Stop(Exception):
        pass

    def stop_after_first(epoch, metrics):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        run_experiment(compose(overrides=toy_overrides(tmp_path / "b", *extra)), on_validation=stop_after_first)
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["epoch"] == 1
    epochs_after_resume = []
    resumed = run_experiment(
        compose(overrides=toy_overrides(tmp_path / "b", *extra, "train.resume=auto")),
        on_validation=lambda epoch, metrics: epochs_after_resume.append(epoch),
    )
    assert epochs_after_resume == [2]  # it continued; it did not start over
    a = load_checkpoint(tmp_path / "a" / "model.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "model.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert resumed["final_loss"] == straight["final_loss"]
    assert resumed["rsum"] == straight["rsum"] and resumed["epochs"] == 3


def test_eval_command_reproduces_test_metrics(tmp_path, capsys):
    result = run_experiment(compose(overrides=toy_overrides(tmp_path, "train.epochs=2")))
    again = evaluate_checkpoint(tmp_path / "model.pt")
    for key in ("i2t_r1", "t2i_r5", "rsum", "i2t_meanr"):
        assert again[key] == result[key]
    first_eval = tmp_path / "eval"
    assert (
        again["output_dir"].startswith(str(first_eval))
        and (first_eval / again["output_dir"][len(str(first_eval)) + 1 :] / "results.json").is_file()
    )
    # a second evaluation lands in a new directory and leaves the first one alone
    second = evaluate_checkpoint(tmp_path / "model.pt", output_dir=again["output_dir"])
    assert second["output_dir"] != again["output_dir"] and (tmp_path / "eval").is_dir()
    # Score the same trained features with another (parameter-free) aligner, through the CLI.
    code = cli_main(
        [
            "eval",
            f"ckpt={tmp_path / 'model.pt'}",
            "aligner=global",
            "--json",
            f"--output-dir={tmp_path / 'eval_global'}",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rsum"] > 0
    saved = json.loads((tmp_path / "eval_global" / "results.json").read_text())
    assert saved["labels"]["aligner"] == "global"


def test_cli_train_runs_and_reports_config_errors(tmp_path, capsys):
    assert cli_main(["train", *toy_overrides(tmp_path, "train.epochs=1"), "--json"]) == 0
    assert "rsum" in json.loads(capsys.readouterr().out)
    assert cli_main(["train", "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert cli_main(["eval", "ckpt=a.pt", "ckpt=b.pt"]) == 2
    assert "one ckpt" in capsys.readouterr().err


def test_eval_without_a_checkpoint_is_zero_shot_and_says_so(tmp_path, capsys):
    code = cli_main(["eval", "data=toy", "encoder=toy", "aligner=mean_max", "data.num_test=16", "device=cpu",
                     "eval.progress=false", "--json", f"--output-dir={tmp_path / 'zs'}"])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "zs" / "results.json").read_text())
    assert saved["trained"] is False and saved["labels"]["trained"] is False
    assert saved["metrics"]["rsum"] == printed["rsum"] and (tmp_path / "zs" / "ranks.npz").is_file()


def test_gradient_accumulation_and_bf16_autocast_train(tmp_path):
    cfg = compose(
        overrides=toy_overrides(tmp_path, "train.epochs=2", "train.accumulate=2", "train.amp=bf16", "eval.split=train")
    )
    result = run_experiment(cfg)
    assert result["steps"] == 2 * (384 // 32) // 2
    assert result["i2t_r5"] > 10  # chance: ~2.6 %


def test_results_carry_provenance_and_two_identical_runs_land_in_two_directories(tmp_path):
    import subprocess

    first = compose(overrides=toy_overrides(tmp_path / "run", "train.epochs=1"))
    second = compose(overrides=toy_overrides(tmp_path / "run", "train.epochs=1"))
    with pytest.warns(UserWarning, match="already holds results"):
        run_experiment(first, overrides=["train.epochs=1"])
        run_experiment(second)
    dirs = sorted(p.parent.name for p in tmp_path.glob("*/results.json"))
    assert dirs == ["run", "run-1"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    prov = saved["provenance"]
    for key in ("finealign_version", "python", "torch", "numpy", "optuna", "device", "threads", "argv"):
        assert prov[key] not in (None, ""), key
    assert prov["overrides"] == ["train.epochs=1"] and saved["config"]["eval"]["split"] == "test"
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head:  # run from a checkout: the commit and the dirty flag are recorded
        assert prov["git_commit"] == head and isinstance(prov["git_dirty"], bool)
    ranks = np.load(tmp_path / "run" / "ranks.npz")
    assert len(ranks["i2t"]) == 48 and len(ranks["t2i"]) == len(ranks["caption_item"]) == 48 * 2


def test_default_output_dirs_are_timestamped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose(overrides=["data=toy"])
    assert re.search(r"runs/toy/toy/mean_max-infonce/\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}$", str(cfg.output_dir))


def test_training_logs_each_epoch_and_writes_tensorboard_scalars(tmp_path, caplog):
    import logging

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with caplog.at_level(logging.INFO, logger="finealign.engine.trainer"):
        run_experiment(compose(overrides=toy_overrides(tmp_path, "train.epochs=2", "train.eval_every=1")))
    lines = [r.getMessage() for r in caplog.records if r.name == "finealign.engine.trainer"]
    assert (
        len(lines) == 2
        and lines[1].startswith("epoch 2/2: loss ")
        and "temperature" in lines[1]
        and "val rsum" in lines[1]
    )
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/temperature", "val/rsum"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]


def test_mlflow_run_holds_config_epochs_and_test_metrics(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = run_experiment(compose(overrides=toy_overrides(
        tmp_path / "run", "train.epochs=2", "train.eval_every=1", "train.mlflow=true", f"train.mlflow_tracking_uri={uri}",
        "train.mlflow_experiment=toy")))  # fmt: skip
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("toy").experiment_id])
    assert run.data.params["aligner.name"] == "mean_max" and run.data.params["train.epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert run.data.metrics["test_rsum"] == pytest.approx(out["rsum"])
    with pytest.raises(ConfigError, match="mlflow_experiment"):
        compose_and_validate(["train.mlflow_experiment=''"])


def compose_and_validate(overrides):
    from finealign.config import validate

    return validate(compose(overrides=["data=toy", *overrides]))


def test_progress_bars_only_on_a_tty_with_one_switch(monkeypatch):
    from finealign.progress import show_progress

    monkeypatch.delenv("FINEALIGN_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert not show_progress(True)
    monkeypatch.setenv("FINEALIGN_PROGRESS", "1")
    assert show_progress(True) and not show_progress(False)
    monkeypatch.setenv("FINEALIGN_PROGRESS", "0")
    assert not show_progress(True)


def test_version_flag(capsys):
    from finealign import __version__

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith(f"finealign {__version__}")
