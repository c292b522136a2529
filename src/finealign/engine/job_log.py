"""Hydra's job logging for finealign's runs: while a run lasts, every log record the command line
shows also goes to `<run dir>/<name>.log` (a logging FileHandler on the root logger), so the run
directory keeps its own story beside its results."""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

#: Hydra's job_logging format
FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class JobLog:
    """A context that writes the root logger's records to a file from `start(path)` until exit."""

    def __init__(self) -> None:
        self.handler: logging.FileHandler | None = None
        self.level: int | None = None  # finealign's logger level before the run raised it to INFO

    def start(self, path: Path) -> None:
        """Begin writing to `path` (once the run directory exists); a second call is ignored."""
        if self.handler is not None:
            return
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(FORMAT))
        self.handler.setLevel(logging.INFO)
        logging.getLogger().addHandler(self.handler)
        # As Hydra's job logging does, the run's INFO records are kept even where the host
        # application logs only warnings (restored on exit).
        ours = logging.getLogger("finealign")
        if ours.getEffectiveLevel() > logging.INFO:
            self.level = ours.level
            ours.setLevel(logging.INFO)

    def __enter__(self) -> JobLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.handler is None:
            return
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            logging.getLogger("finealign").error("run failed: %s: %s", type(exc).__name__, exc)
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()
        self.handler = None
        if self.level is not None:
            logging.getLogger("finealign").setLevel(self.level)
            self.level = None
