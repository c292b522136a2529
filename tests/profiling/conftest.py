"""Keep the measured-throughput cache out of the user's home during tests (one per session)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def _profiling_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("finealign_cache")


@pytest.fixture(autouse=True)
def _isolated_cache(_profiling_cache, monkeypatch):
    monkeypatch.setenv("FINEALIGN_CACHE", str(_profiling_cache))
