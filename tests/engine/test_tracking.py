"""Loggers that compare runs: two toy runs land in one MLflow store (named, tagged, with params and
test metrics) and in TensorBoard with their hparams and test metrics; a protocol's and a sweep's
runs are named after what they are."""

from __future__ import annotations

import json

import pytest

from finealign.config import compose
from finealign.engine import tracking
from finealign.engine.experiment import run_experiment
from finealign.engine.tracking import RunIdentity, hparam_values, run_identity, tracked_as


def toy(out, *extra):
    return compose(overrides=["train=quick", f"output_dir={out}", "train.progress=false", "eval.progress=false",
                              "device=cpu", "data.num_train=48", "data.num_val=16", "data.num_test=16",
                              "encoder.embed_dim=16", "train.batch_size=16", "train.epochs=2",
                              "eval.save_ranks=false", "train.save_model=false", "train.checkpoint=false",
                              *extra])  # fmt: skip


RUNS = {"a": ("mean_max", "infonce", 0), "b": ("global", "triplet", 1)}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two runs that differ in aligner, loss and seed, started from one working directory with
    MLflow on and no store named: both go to that directory's runs/mlflow.db."""
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        results = {
            key: run_experiment(
                toy(
                    root / "runs" / key,
                    f"aligner={aligner}",
                    f"loss={loss}",
                    f"seed={seed}",
                    "train.mlflow=true",
                    "train.tensorboard=true",
                )
            )  # fmt: skip
            for key, (aligner, loss, seed) in RUNS.items()
        }
    return root, results


@pytest.mark.slow
def test_two_runs_share_the_projects_mlflow_store_named_and_tagged(two_runs):
    from mlflow.tracking import MlflowClient

    root, results = two_runs
    store = root / "runs" / "mlflow.db"
    assert store.is_file() and not list((root / "runs").glob("*/mlflow.db"))  # one store, not one per run
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("finealign")
    found = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(found) == 2
    for run, (key, (aligner, loss, seed)) in zip(found, RUNS.items(), strict=True):
        assert run.info.run_name.startswith(f"{aligner}-{loss}-")  # <aligner>-<loss>-<time>
        tags = run.data.tags
        assert (tags["aligner"], tags["loss"], tags["seed"], tags["data"]) == (aligner, loss, str(seed), "toy")
        assert tags["output_dir"] == str(root / "runs" / key)
        assert run.data.params["aligner.name"] == aligner and run.data.params["seed"] == str(seed)
        assert run.data.metrics["test_rsum"] == pytest.approx(results[key]["rsum"])
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    # what a comparison in the store looks like: filter by a tag, order by a test metric
    best = client.search_runs([experiment.experiment_id], "tags.loss = 'triplet'", order_by=["metrics.test_rsum DESC"])
    assert [r.data.tags["aligner"] for r in best] == ["global"]


def _hparams(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    events = EventAccumulator(str(tb_dir))
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert metadata.SESSION_END_INFO_TAG in content
    assert metadata.EXPERIMENT_TAG not in content  # the dashboard takes its columns from every run's hparams
    values = {}
    for key, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        values[key] = getattr(value, kind)
    return values, events


@pytest.mark.slow
def test_tensorboard_holds_each_runs_hparams_and_test_metrics(two_runs):
    root, results = two_runs
    for key, (aligner, loss, seed) in RUNS.items():
        hparams, events = _hparams(root / "runs" / key / "tb")
        assert hparams["aligner.name"] == aligner and hparams["loss.name"] == loss and hparams["seed"] == seed
        assert hparams["train.epochs"] == 2 and hparams["run.aligner"] == aligner
        scalars = set(events.Tags()["scalars"])
        assert {"train/loss", "val/rsum", "test/rsum", "test/i2t_r1", "test/t2i_r1"} <= scalars
        (test_rsum,) = events.Scalars("test/rsum")
        assert test_rsum.value == pytest.approx(results[key]["rsum"], rel=1e-6)
        saved = json.loads((root / "runs" / key / "results.json").read_text())
        assert saved["tracking_failures"] == []


def test_run_names_of_protocol_and_sweep_runs_and_of_method_presets():
    assert run_identity({"method": "chan", "aligner": "hard", "loss": "triplet"}).name.startswith("chan-")
    with tracked_as("study/trial_0003", {"study": "study", "trial": 3}):
        with tracked_as("study/trial_0003", {"protocol": "p", "factor": None}):
            identity = run_identity({"aligner": "hard", "seed": 1})
    assert identity == RunIdentity("study/trial_0003", {"aligner": "hard", "seed": "1", "study": "study",
                                                        "trial": "3", "protocol": "p"})  # fmt: skip
    assert run_identity({"aligner": "hard", "loss": "cmc"}).name.startswith("hard-cmc-")  # the context is gone
    values = hparam_values({"a": {"b": None, "c": [1, 2], "d": 0.5}}, identity)
    assert values["a.b"] == "None" and values["a.c"] == "[1, 2]" and values["a.d"] == 0.5
    assert values["run.protocol"] == "p"


@pytest.mark.slow
def test_a_protocols_final_and_tuning_runs_are_named_by_protocol_method_level_seed(tmp_path, monkeypatch):
    from finealign.protocol.loader import load_protocol
    from finealign.protocol.run import run_protocol
    from tests.protocol.objectives import ranked

    monkeypatch.chdir(tmp_path)
    spec, extra = load_protocol(["protocol=toy_ablation", "protocol.tune.sampler=random",
                                 "protocol.tune.n_trials=1", "protocol.seeds=[0]"])  # fmt: skip
    seen: list[RunIdentity] = []

    def objective(overrides, report):
        seen.append(run_identity({"aligner": "x"}))
        return ranked(overrides, report)

    run_protocol(spec, extra, storage=f"sqlite:///{tmp_path / 'p.db'}", out_dir=tmp_path / "bench",
                 objective=objective, progress=False)  # fmt: skip
    finals = {i.name: i.tags for i in seen if i.tags.get("stage") == "final"}
    tunes = [i for i in seen if i.tags.get("stage") == "tune"]
    base = f"{spec.study}/{spec.methods[0].name}/seed_0"
    assert finals[base] == {"aligner": "x", "protocol": spec.study, "method": spec.methods[0].name,
                            "stage": "final", "seed": "0"}  # fmt: skip
    levels = [name for name, tags in finals.items() if "factor" in tags]
    assert levels and all(n.count("/") == 3 and finals[n]["level"] in n for n in levels)
    assert tunes and all(i.name.startswith(f"{spec.study}-") and "/trial_" in i.name for i in tunes)
    assert all(i.tags["protocol"] == spec.study and i.tags["study"] in i.name for i in tunes)


def test_a_failing_tensorboard_hparams_write_is_recorded_not_raised(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracking, "log_hparams", broken)
    failures = tracking.log_final_metrics(tracking.FinalTargets(None, tmp_path / "tb", {"a": 1}), {"rsum": 1.0})
    assert failures == ["TensorBoard logging the test metrics and hparams failed: OSError: [Errno 28] "
                        "No space left on device"]  # fmt: skip
