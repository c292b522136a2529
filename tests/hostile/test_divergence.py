"""Diverged training is a failure, never a result (issue 26): `train.lr=1e3` once drove InfoNCE's
learnable temperature to inf, every logit flat, and the run ended at chance recall with exit 0 —
the embeddings stayed finite (cosine scores are scale-free), so the NaN checks never fired. Now a
non-finite or runaway temperature, loss or score stops the run with a DivergenceError naming the
step, and a sweep trial that diverged is FAIL with the reason."""

import pytest

from finealign.cli.main import main as cli_main
from finealign.config import compose
from finealign.engine.experiment import run_experiment
from finealign.errors import DivergenceError
from finealign.sweeps import run_sweep


def flickr8k_like(out, *extra):
    """The main job's training settings (warm-up, one caption per image, no validation) on toy data."""
    return ["data=toy", "encoder=toy", "train=flickr8k", f"output_dir={out}", "device=cpu", "data.num_train=64",
            "data.num_val=16", "data.num_test=16", "train.batch_size=16", "train.tensorboard=false",
            "eval.progress=false", *extra]  # fmt: skip


@pytest.mark.parametrize("lr", ["1e3", "1e6"])
def test_a_learning_rate_that_flattens_the_temperature_stops_the_run_with_no_result(tmp_path, lr):
    with pytest.raises(
        DivergenceError, match=r"temperature (became inf|ran away).*at epoch \d+, batch \d+.*lower train.lr"
    ):
        run_experiment(compose(overrides=flickr8k_like(tmp_path, f"train.lr={lr}")))
    assert not (tmp_path / "results.json").exists()  # a failure, never a result


def test_a_runaway_but_finite_temperature_is_divergence_too(tmp_path):
    with pytest.raises(DivergenceError, match="temperature"):
        run_experiment(compose(overrides=flickr8k_like(tmp_path, "train.lr=30", "train.warmup_steps=0")))


def test_scores_that_overflow_stop_the_run_naming_the_scores(tmp_path):
    # a score scale that overflows float32: every score is inf from the first step
    with pytest.raises(DivergenceError, match="aligner's scores became NaN/inf at epoch 0, batch 0"):
        run_experiment(compose(overrides=flickr8k_like(tmp_path, "aligner.scale=1e39")))


def test_the_cli_exits_non_zero_with_one_line_naming_the_divergence(tmp_path, capsys):
    code = cli_main(["train", *flickr8k_like(tmp_path, "train.lr=1e3")])
    err = capsys.readouterr().err
    assert code == 3 and "finealign train: diverged: the loss's temperature" in err and "Traceback" not in err


def test_a_sweep_trial_that_diverged_is_fail_with_the_reason_never_complete(tmp_path):
    result = run_sweep(
        ["sweep=toy", "sweep.sampler=random", "sweep.n_trials=1", "train.lr=1e3"],
        storage=f"sqlite:///{tmp_path / 's.db'}", out_dir=tmp_path / "out", progress=False,
    )  # fmt: skip
    (trial,) = result.study.trials
    assert trial.state.name == "FAIL" and result.stats.complete == 0
    assert trial.user_attrs["diverged"] is True and "DivergenceError" in trial.user_attrs["error"]
