"""Where per-epoch scalars go besides the log: TensorBoard (SummaryWriter in <run>/tb) and MLflow
(when installed and asked for with train.mlflow). Each sink is optional and independent."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
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


class TensorBoardSink:
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
    """Every open sink; `log` fans out, `close` closes all."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    @property
    def mlflow_run(self) -> tuple[str, str] | None:
        """(tracking URI, run id) of the MLflow run, if one is open."""
        return next(((s.tracking_uri, s.run_id) for s in self.sinks if isinstance(s, MLflowSink)), None)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.log(scalars, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


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
    if output_dir is None:
        return ScalarSinks(sinks)
    if cfg.tensorboard:
        try:
            sinks.append(TensorBoardSink(output_dir / "tb"))
        except ImportError:
            log.info("tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)")
    if cfg.mlflow:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError("train.mlflow=true needs MLflow: pip install 'finealign[mlflow]'") from None
        sinks.append(MLflowSink(mlflow_tracking_uri(cfg, output_dir), cfg.mlflow_experiment, output_dir.name, params))
    return ScalarSinks(sinks)


def log_final_metrics(run: tuple[str, str] | None, metrics: Mapping[str, Any]) -> None:
    """Add the test metrics to a finished MLflow run (as `test_<name>`)."""
    if run is None:
        return
    from mlflow.tracking import MlflowClient

    uri, run_id = run
    client = MlflowClient(tracking_uri=uri)
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            client.log_metric(run_id, f"test_{key}", float(value))
