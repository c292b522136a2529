"""Where per-epoch scalars go besides the log: TensorBoard (SummaryWriter in <run>/tb) and MLflow
(when installed and asked for with train.mlflow). Each sink is optional and independent.

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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from finealign.config import TrainConfig
from finealign.errors import ConfigError

log = logging.getLogger(__name__)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} → {"train.lr": 1}: a nested config as dotted keys."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


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

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowSink:
    """One MLflow run per training run: the resolved config as params, scalars per epoch; the test
    metrics are added afterwards through `run_id` (log_final_metrics)."""

    name = "MLflow"

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, params: Mapping[str, Any]):
        import mlflow

        self.mlflow, self.tracking_uri = mlflow, tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_name)
        self.run_id = self.run.info.run_id
        # MLflow caps a param value at a few thousand characters; long lists are recorded truncated
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("/", "_"): float(v) for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class ScalarSinks:
    """Every open sink; `log` fans out, `close` closes all. A sink that raises is dropped with a
    warning and its failure recorded in `failures`; the others go on."""

    def __init__(self, sinks: list[Any], failures: list[str] | None = None):
        self.sinks = sinks
        self.failures: list[str] = list(failures or [])

    @property
    def mlflow_run(self) -> tuple[str, str] | None:
        """(tracking URI, run id) of the MLflow run, if one is open (and has not failed)."""
        return next(((s.tracking_uri, s.run_id) for s in self.sinks if isinstance(s, MLflowSink)), None)

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
        self._each("close", lambda sink: sink.close())  # the sinks stay listed: mlflow_run names a closed run


def note_failure(sink: str, action: str, exc: BaseException) -> str:
    """Warn that a sink failed (training goes on) and return the line results.json records."""
    message = f"{sink} {action} failed: {_first_line(exc)}"
    log.warning("%s — training goes on without %s (recorded in results.json as tracking_failures)", message, sink)
    return message


def mlflow_tracking_uri(cfg: TrainConfig, output_dir: Path) -> str:
    """train.mlflow_tracking_uri, else $MLFLOW_TRACKING_URI, else a SQLite store in the run dir."""
    return (
        cfg.mlflow_tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{output_dir.resolve() / 'mlflow.db'}"
    )


def open_sinks(cfg: TrainConfig, output_dir: Path | None, params: Mapping[str, Any]) -> ScalarSinks:
    """TensorBoard when train.tensorboard and the package is there (silently skipped otherwise: it
    is on by default); MLflow when train.mlflow (asked for, so a missing package is an error)."""
    sinks: list[Any] = []
    failures: list[str] = []
    if output_dir is None:
        return ScalarSinks(sinks)
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
        uri = mlflow_tracking_uri(cfg, output_dir)
        try:
            with mlflow_http_limits():
                sinks.append(MLflowSink(uri, cfg.mlflow_experiment, output_dir.name, params))
        except Exception as exc:
            failures.append(note_failure("MLflow", f"open of the store {uri}", exc))
    return ScalarSinks(sinks, failures)


def log_final_metrics(run: tuple[str, str] | None, metrics: Mapping[str, Any]) -> str | None:
    """Add the test metrics to a finished MLflow run (as `test_<name>`); a failure is warned about
    and returned (the line results.json records), never raised."""
    if run is None:
        return None
    try:
        from mlflow.tracking import MlflowClient

        uri, run_id = run
        with mlflow_http_limits():
            client = MlflowClient(tracking_uri=uri)
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    client.log_metric(run_id, f"test_{key}", float(value))
    except Exception as exc:
        return note_failure("MLflow", "logging the test metrics", exc)
    return None
