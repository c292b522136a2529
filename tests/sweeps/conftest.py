"""Helpers for sweep tests: a study in a temporary SQLite file, spec edits, CLI subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from finealign.sweeps import LoadedSweep, load_sweep
from finealign.sweeps.spec import SweepSpec

REPO = Path(__file__).resolve().parents[2]
FAKE = "tests.sweeps.objectives:scored"


@pytest.fixture
def where(tmp_path):
    """Keyword arguments of run_sweep that keep storage and outputs inside tmp_path."""
    return {"storage": f"sqlite:///{tmp_path / 'study.db'}", "out_dir": tmp_path / "out", "progress": False}


def toy_raw() -> dict:
    """configs/sweep/toy.yaml as a plain dict, to edit in a test."""
    from finealign.config import config_dir

    return OmegaConf.to_container(OmegaConf.load(config_dir() / "sweep" / "toy.yaml"), resolve=True)


def from_raw(raw: dict) -> LoadedSweep:
    spec = SweepSpec.from_dict(raw)
    return LoadedSweep(spec, spec.overrides)


def toy(*overrides: str) -> LoadedSweep:
    return load_sweep(["sweep=toy", *overrides])


def cli(args: list[str], env_extra: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """Start `finealign sweep ...` (the CLI entry point) as a real subprocess from the repo root,
    so that the test objective module `tests.sweeps.objectives` is importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    cmd = [sys.executable, "-c", "import sys; from finealign.cli.main import main; sys.exit(main())", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
