"""Hostile or careless runs: each case of the hostile-input pass (issue 13) as a regression test.
Each ends in an error that names the problem — never a lost run, a silent fallback or a write
outside its folder."""

import json
import zipfile

import pytest

from finealign.cli.main import main as cli_main
from finealign.config import compose
from finealign.data.download import RemoteFile, _extract
from finealign.engine import experiment
from finealign.engine.experiment import run_experiment
from finealign.errors import ConfigError, DataError, DivergenceError, ShapeError, UnknownNameError
from finealign.registry import create_aligner, create_dataset
from finealign.sweeps import load_report, run_sweep
from finealign.tokens import TokenBatch


def toy(out, *extra):
    return compose(overrides=[
        "data=toy", "encoder=toy", "train=quick", f"output_dir={out}", "train.progress=false", "eval.progress=false",
        "device=cpu", "data.num_train=64", "data.num_val=16", "data.num_test=16", "train.batch_size=16", *extra,
    ])  # fmt: skip


# -- training runs ------------------------------------------------------------------------------
def test_a_huge_learning_rate_stops_at_the_step_it_breaks_and_names_the_lr(tmp_path):
    # The first step drives InfoNCE's learnable scale to 0 (temperature inf): every logit is flat and
    # nothing would learn again. The trainer stops at that step and names the learning rate.
    with pytest.raises(
        DivergenceError,
        match=r"became (NaN/)?inf at epoch \d, batch \d \(after \d+ optimiser steps, lr [0-9.e+]+\).*lower train.lr",
    ):
        run_experiment(toy(tmp_path, "train.lr=1e6", "train.epochs=6", "train.warmup_steps=0"))


def test_resume_with_changed_settings_is_refused_listing_the_differences(tmp_path):
    run_experiment(toy(tmp_path / "a", "train.epochs=2", "train.checkpoint=true"))
    with pytest.raises(ConfigError, match=r"train.epochs: 2 → 3.*train.lr: 0.002 → 0.5"):
        run_experiment(toy(tmp_path / "a", "train.epochs=3", "train.lr=0.5", "train.checkpoint=true",
                           f"train.resume={tmp_path / 'a' / 'checkpoints' / 'last.pt'}"))  # fmt: skip


def test_resuming_another_aligners_checkpoint_is_a_config_error(tmp_path):
    run_experiment(toy(tmp_path / "a", "train.epochs=1", "train.checkpoint=true", "aligner=mean_max"))
    with pytest.raises(ConfigError, match=r"aligner.name: 'mean_max' → 'hard'"):
        run_experiment(toy(tmp_path / "b", "train.epochs=1", "aligner=hard",
                           f"train.resume={tmp_path / 'a' / 'checkpoints' / 'last.pt'}"))  # fmt: skip


def test_an_unwritable_output_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="not writable"):
        run_experiment(toy(blocker / "run", "train.epochs=50"))


def test_a_failing_test_evaluation_keeps_the_trained_model(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(experiment, "_test_metrics", broken)
    with pytest.raises(RuntimeError, match="model.pt and train.json are saved.*disk full"):
        run_experiment(toy(tmp_path, "train.epochs=1"))
    assert (tmp_path / "model.pt").is_file()
    assert json.loads((tmp_path / "train.json").read_text())["metrics"]["epochs"] == 1


# -- datasets and paths --------------------------------------------------------------------------
def _karpathy(tmp_path, image):
    (tmp_path / "images").mkdir(exist_ok=True)
    good = {"filename": "a.jpg", "split": "test", "sentences": [{"raw": "a dog"}]}
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": [good, image]}))
    return create_dataset("flickr8k", root=str(tmp_path))


@pytest.mark.parametrize("image,match", [
    ({"filename": "b.jpg", "sentences": [{"raw": "x"}]}, "split None"),
    ({"filename": "../../etc/hostname", "split": "test", "sentences": [{"raw": "x"}]}, "relative path inside"),
    ({"filename": "/etc/hostname", "split": "test", "sentences": [{"raw": "x"}]}, "relative path inside"),
    ({"filename": "b.jpg", "filepath": "../..", "split": "test", "sentences": [{"raw": "x"}]}, "filepath"),
    ({"filename": "b.jpg", "split": "test", "sentences": []}, "no sentences"),
    ({"filename": "b.jpg", "split": "test", "sentences": [{"raw": "   "}]}, "empty or malformed caption"),
])  # fmt: skip
def test_hostile_dataset_entries_are_named_before_anything_runs(tmp_path, image, match):
    with pytest.raises(DataError, match=f"image entry 1 .*{match}"):
        _karpathy(tmp_path, image).split("test")


def test_a_data_root_variable_pointing_nowhere_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEALIGN_DATA_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="FINEALIGN_DATA_ROOT.*not a folder"):
        create_dataset("flickr8k").split("test")


def test_zip_slip_members_are_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/a.txt", "fine")
        zf.writestr("../../escaped.txt", "payload")
    with pytest.raises(DataError, match="points outside"):
        _extract(archive, RemoteFile(url="https://example.org/evil.zip"), tmp_path / "root")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_study_names_cannot_leave_the_sweep_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no slashes"):
        run_sweep(["sweep=toy"], study_name="../../x")
    with pytest.raises(ConfigError, match="no slashes"):
        load_report("../x")
    assert not list(tmp_path.parent.glob("x.db"))


def test_report_on_a_file_that_is_no_database_is_a_config_error(tmp_path, capsys):
    fake = tmp_path / "notes.db"
    fake.write_text("this is not sqlite")
    assert cli_main(["report", "toy", "--storage", f"sqlite:///{fake}"]) == 2
    assert "not a readable Optuna database" in capsys.readouterr().err


# -- the API edge ---------------------------------------------------------------------------------
def test_numpy_tokens_mixed_dtypes_and_missing_names_are_named():
    import numpy as np
    import torch

    aligner = create_aligner("mean_max")
    real = TokenBatch(torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"visual.tokens must be a torch.Tensor, got numpy.ndarray"):
        aligner(TokenBatch(np.zeros((2, 3, 4), np.float32), np.ones((2, 3), bool)), real)
    with pytest.raises(ShapeError, match="torch.float32 but text tokens are torch.float16"):
        aligner(real, TokenBatch(real.tokens.half(), real.mask))
    with pytest.raises(UnknownNameError, match="non-empty string, got None"):
        create_aligner(None)


@pytest.mark.parametrize("options,match", [
    ({"normalize": "no"}, "normalize"), ({"temperature": "0.1"}, "temperature"), ({"temperature": float("inf")}, "temperature"),
])  # fmt: skip
def test_strings_and_non_finite_values_for_options_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        create_aligner("hard", **options)


def test_evaluating_a_checkpoint_with_another_architecture_names_the_tensor(tmp_path):
    from finealign.engine.experiment import evaluate_checkpoint

    run_experiment(toy(tmp_path, "train.epochs=1"))
    with pytest.raises(ConfigError, match=r"does not fit this model: .* is \(\d+, \d+\) in the checkpoint"):
        evaluate_checkpoint(tmp_path / "model.pt", ["encoder.embed_dim=8"])


def test_a_trial_left_by_a_dead_worker_says_why(tmp_path):
    import optuna

    from finealign.sweeps.results import trials_frame
    from finealign.sweeps.storage import MAX_ATTEMPTS, requeue_stale_trial
    from finealign.sweeps.study import SPEC_ATTR
    from tests.sweeps.conftest import toy

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", directions=["maximize", "minimize"])
    study.set_user_attr(SPEC_ATTR, toy().spec.to_dict())
    trial = study.ask()
    trial.set_user_attr("attempt", MAX_ATTEMPTS)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # what fail_stale_trials leaves
    requeue_stale_trial(study, study.trials[0])
    frame = trials_frame(study)
    assert len(frame) == 1 and "stopped sending heartbeats" in frame.loc[0, "error"]
    assert f"not retried after {MAX_ATTEMPTS} attempts" in frame.loc[0, "error"]
