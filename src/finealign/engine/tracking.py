"""Where a run's numbers go besides the log and results.json, so that runs can be compared:
TensorBoard (SummaryWriter in <run>/tb: per-epoch scalars, then the test metrics and the run's
hparams) and MLflow (when installed and asked for with train.mlflow: one store per project).
Each sink is optional and independent.

Comparing runs is the point of both, so both are set up for it:
- MLflow: one store for every run of a project — `train.mlflow_tracking_uri`, else
  $MLFLOW_TRACKING_URI, else `runs/mlflow.db` under the working directory (where the default run
  folders live) — and each run named and tagged (`run_identity`): `<method|aligner-loss>-<time>`
  with tags aligner, loss, method, data, encoders, seed; a protocol's final run is named
  `<study>/<method>[/<factor>-<level>]/seed_<s>` and a sweep trial `<study>/trial_<n>`, with the
  protocol's or study's tags on top (`tracked_as`, set by the worker that runs them).
- TensorBoard: after the test evaluation, the test metrics as scalars (`test/<metric>`) and the
  resolved flat config as the run's hparams (the HParams plugin's session start/end records). No
  experiment record is written, so the HParams dashboard builds its columns from the union of all
  runs' hparams: `tensorboard --logdir runs` compares every run below, whatever its aligner.

A sink never kills training: a sink that fails to open, to log or to close (an unwritable or
absent MLflow store, a full disk under tb/) is dropped with a warning, and the failure is recorded
(`ScalarSinks.failures`, written to results.json as "tracking_failures") while training, the model
and the metrics go on. An HTTP MLflow store is given few retries and a short timeout unless the
MLFLOW_HTTP_REQUEST_* variables say otherwise (MLflow's own default waits ~4 minutes per call).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finealign.config import TrainConfig
from finealign.errors import ConfigError

log = logging.getLogger(__name__)

#: The project's MLflow store when neither train.mlflow_tracking_uri nor $MLFLOW_TRACKING_URI names one
#: (relative to the working directory, beside the default run folders under runs/).
DEFAULT_MLFLOW_STORE = Path("runs") / "mlflow.db"


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} → {"train.lr": 1}: a nested config as dotted keys."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


# -- what a run is called -----------------------------------------------------------------------


@dataclass(frozen=True)
class RunIdentity:
    """A run's name and tags in the trackers (MLflow run name and tags; TensorBoard hparams)."""

    name: str
    tags: dict[str, str] = field(default_factory=dict)


# Set by whoever runs an experiment as part of something larger (a protocol's final run, a sweep
# trial): the engine is called through an objective that only passes overrides, so the name and
# tags travel beside the call, not through the config.
_CONTEXT: ContextVar[RunIdentity | None] = ContextVar("finealign_run_identity", default=None)


@contextlib.contextmanager
def tracked_as(name: str, tags: Mapping[str, Any]) -> Iterator[None]:
    """Runs started inside are named `name` and carry `tags` (added to the tags of an enclosing
    `tracked_as`; the inner name wins)."""
    outer = _CONTEXT.get()
    merged = {**(outer.tags if outer else {}), **{k: str(v) for k, v in tags.items() if v is not None}}
    token = _CONTEXT.set(RunIdentity(name, merged))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def run_identity(labels: Mapping[str, Any], output_dir: Path | None = None) -> RunIdentity:
    """The run's name and tags: the labels (aligner, loss, method, data, encoders, seed) and the
    run folder as tags; the name given by an enclosing `tracked_as`, else
    `<method>-<time>` for a method preset and `<aligner>-<loss>-<time>` otherwise."""
    tags = {k: str(v) for k, v in labels.items() if v is not None}
    if output_dir is not None:
        tags["output_dir"] = str(Path(output_dir).resolve())
    context = _CONTEXT.get()
    if context is not None:
        return RunIdentity(context.name, {**tags, **context.tags})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    method = labels.get("method")
    what = str(method) if method else f"{labels.get('aligner', 'run')}-{labels.get('loss', 'loss')}"
    return RunIdentity(f"{what}-{stamp}", tags)


# MLflow's HTTP client settings while a sink talks to its store (a user's own values win)
MLFLOW_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # fmt: skip


@contextlib.contextmanager
def mlflow_http_limits() -> Iterator[None]:
    unset = [k for k in MLFLOW_HTTP_LIMITS if k not in os.environ]
    os.environ.update({k: MLFLOW_HTTP_LIMITS[k] for k in unset})
    try:
        yield
    finally:
        for key in unset:
            os.environ.pop(key, None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


class TensorBoardSink:
    name = "TensorBoard"

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowSink:
    """One MLflow run per training run, named and tagged (RunIdentity): the resolved config as
    params, scalars per epoch; the test metrics are added afterwards through `run_id`
    (log_final_metrics)."""

    name = "MLflow"

    def __init__(self, tracking_uri: str, experiment: str, identity: RunIdentity, params: Mapping[str, Any]):
        import mlflow

        self.mlflow, self.tracking_uri = mlflow, tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=identity.name, tags=identity.tags)
        self.run_id = self.run.info.run_id
        # MLflow caps a param value at a few thousand characters; long lists are recorded truncated
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("/", "_"): float(v) for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


@dataclass(frozen=True)
class FinalTargets:
    """Where the test metrics go once the run is evaluated (after its sinks were closed)."""

    mlflow_run: tuple[str, str] | None = None  # (tracking URI, run id)
    tensorboard_dir: Path | None = None
    hparams: dict[str, Any] = field(default_factory=dict)  # the flat config + the run's tags


class ScalarSinks:
    """Every open sink; `log` fans out, `close` closes all. A sink that raises is dropped with a
    warning and its failure recorded in `failures`; the others go on."""

    def __init__(self, sinks: list[Any], failures: list[str] | None = None, hparams: Mapping[str, Any] | None = None):
        self.sinks = sinks
        self.failures: list[str] = list(failures or [])
        self.hparams = dict(hparams or {})

    @property
    def mlflow_run(self) -> tuple[str, str] | None:
        """(tracking URI, run id) of the MLflow run, if one is open (and has not failed)."""
        return next(((s.tracking_uri, s.run_id) for s in self.sinks if isinstance(s, MLflowSink)), None)

    @property
    def finals(self) -> FinalTargets:
        """The sinks still working, as targets for the test metrics."""
        tb = next((s.log_dir for s in self.sinks if isinstance(s, TensorBoardSink)), None)
        return FinalTargets(self.mlflow_run, tb, self.hparams)

    def _each(self, action: str, call: Callable[[Any], None]) -> None:
        for sink in list(self.sinks):
            try:
                with mlflow_http_limits():
                    call(sink)
            except Exception as exc:  # a sink must never end the run it only records
                self.sinks.remove(sink)
                self.failures.append(note_failure(sink.name, action, exc))
                if action != "close":
                    with contextlib.suppress(Exception):
                        sink.close()

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self._each(f"logging epoch {step}", lambda sink: sink.log(scalars, step))

    def close(self) -> None:
        self._each("close", lambda sink: sink.close())  # the sinks stay listed: finals names them


def note_failure(sink: str, action: str, exc: BaseException) -> str:
    """Warn that a sink failed (training goes on) and return the line results.json records."""
    message = f"{sink} {action} failed: {_first_line(exc)}"
    log.warning("%s — training goes on without %s (recorded in results.json as tracking_failures)", message, sink)
    return message


def mlflow_tracking_uri(cfg: TrainConfig) -> str:
    """train.mlflow_tracking_uri, else $MLFLOW_TRACKING_URI, else the project's SQLite store
    (DEFAULT_MLFLOW_STORE under the working directory; its folder is made here)."""
    chosen = cfg.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if chosen:
        return str(chosen)
    store = DEFAULT_MLFLOW_STORE.resolve()
    store.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store}"


def hparam_values(config: Mapping[str, Any], identity: RunIdentity) -> dict[str, Any]:
    """The flat config and the run's tags (`run.<tag>`) as values TensorBoard's hparams accept
    (bool, int, float, str: null and lists become their text)."""
    flat = {**flatten(config), **{f"run.{k}": v for k, v in identity.tags.items()}}
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}


def open_sinks(
    cfg: TrainConfig, output_dir: Path | None, params: Mapping[str, Any], labels: Mapping[str, Any] | None = None
) -> ScalarSinks:
    """TensorBoard when train.tensorboard and the package is there (silently skipped otherwise: it
    is on by default); MLflow when train.mlflow (asked for, so a missing package is an error).
    `params`: the resolved config; `labels`: what names and tags the run (run_identity)."""
    sinks: list[Any] = []
    failures: list[str] = []
    if output_dir is None:
        return ScalarSinks(sinks)
    identity = run_identity(labels or {}, output_dir)
    if cfg.tensorboard:
        try:
            sinks.append(TensorBoardSink(output_dir / "tb"))
        except ImportError:
            log.info("tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)")
        except Exception as exc:
            failures.append(note_failure("TensorBoard", "open", exc))
    if cfg.mlflow:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError("train.mlflow=true needs MLflow: pip install 'finealign[mlflow]'") from None
        uri = "(unresolved)"
        try:
            uri = mlflow_tracking_uri(cfg)
            with mlflow_http_limits():
                sinks.append(MLflowSink(uri, cfg.mlflow_experiment, identity, params))
        except Exception as exc:
            failures.append(note_failure("MLflow", f"open of the store {uri}", exc))
    return ScalarSinks(sinks, failures, hparam_values(params, identity))


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_final_metrics(targets: FinalTargets | None, metrics: Mapping[str, Any]) -> list[str]:
    """Add the test metrics to the run's trackers: MLflow (as `test_<name>` on its finished run),
    TensorBoard (`test/<name>` scalars and the run's hparams). Each failure is warned about and
    returned (the lines results.json records), never raised."""
    if targets is None:
        return []
    numbers = _numbers(metrics)
    failures = []
    if targets.mlflow_run is not None:
        try:
            from mlflow.tracking import MlflowClient

            uri, run_id = targets.mlflow_run
            with mlflow_http_limits():
                client = MlflowClient(tracking_uri=uri)
                for key, value in numbers.items():
                    client.log_metric(run_id, f"test_{key}", value)
        except Exception as exc:
            failures.append(note_failure("MLflow", "logging the test metrics", exc))
    if targets.tensorboard_dir is not None:
        try:
            log_hparams(targets.tensorboard_dir, targets.hparams, numbers)
        except Exception as exc:
            failures.append(note_failure("TensorBoard", "logging the test metrics and hparams", exc))
    return failures


def log_hparams(log_dir: Path, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """The run's hparams (HParams plugin: session start and end) and its test metrics as `test/<name>`
    scalars, in the run's own TensorBoard folder. No experiment record: the dashboard then takes
    its columns from every run's hparams together (SummaryWriter.add_hparams would write one per
    run, into a sub-folder, and the dashboard would show one run's columns only)."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    tags = {f"test/{k}": v for k, v in metrics.items()}
    _, start, end = hparams_summaries(dict(hparams), tags)
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        writer.file_writer.add_summary(start)
        for tag, value in tags.items():
            writer.add_scalar(tag, value)
        writer.file_writer.add_summary(end)
