"""Where a result came from: code version, software, machine, threads, config and command line.

Every results.json and every sweep/protocol trial carries this block, so a number found in a table
months later can be traced to the commit (and whether the checkout had uncommitted edits), the
library versions and the exact overrides that produced it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

import finealign

VERSIONED = ("numpy", "optuna", "scipy", "hydra-core", "pot")


@functools.lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the checkout finealign is imported from; {} when installed from a
    wheel (no .git above the package) or git is missing."""
    source = Path(finealign.__file__).resolve().parent
    try:
        top = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        commit = subprocess.run(
            ["git", "-C", top, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", top, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": bool(status.strip())}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(device: torch.device | str | None = None, overrides: Iterable[str] | None = None) -> dict[str, Any]:
    """The provenance block (JSON-able). `overrides`: the command-line overrides of the run."""
    info: dict[str, Any] = {
        "finealign_version": finealign.__version__,
        **git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{dist.replace("-", "_"): _version(dist) for dist in VERSIONED},
        "platform": platform.platform(),
        "device": str(device) if device is not None else None,
        "threads": torch.get_num_threads(),
        "argv": list(sys.argv),
    }
    if device is not None and torch.device(device).type == "cuda":
        info["cuda_device_name"] = torch.cuda.get_device_name(torch.device(device))
    if overrides is not None:
        info["overrides"] = list(overrides)
    return info
