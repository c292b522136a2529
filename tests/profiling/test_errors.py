"""Bad devices, dtypes, aligner names and settings fail with errors that name the problem."""

from __future__ import annotations

import pytest
import torch

from finealign.errors import ConfigError, DataError, UnknownNameError
from finealign.profiling.device import parse_dtype, resolve_device
from finealign.profiling.inputs import ProblemShape
from finealign.profiling.measure import ProfileSettings, resolve_aligners
from finealign.profiling.timing import choose_timer


def test_unknown_device_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown device 'tpu'.*cpu, cuda"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown dtype 'int8'"):
        parse_dtype("int8")
    assert parse_dtype("bf16") is torch.bfloat16


def test_unknown_aligner_names_close_matches():
    with pytest.raises(UnknownNameError, match="mean_max"):
        resolve_aligners("mean_maxx")


def test_all_lists_every_registered_aligner():
    from finealign.registry import list_aligners

    assert resolve_aligners("all") == list_aligners()
    assert "mean_max" in resolve_aligners("all")


@pytest.mark.parametrize("field,value", [("nv", 0), ("dim", -3), ("lt", 2.5)])
def test_bad_problem_sizes(field, value):
    with pytest.raises(ConfigError, match=field):
        ProblemShape(**{field: value})


def test_bad_settings():
    with pytest.raises(ConfigError, match="repeats"):
        ProfileSettings(repeats=0)
    with pytest.raises(ConfigError, match="timer"):
        ProfileSettings(timer="stopwatch")


def test_gpu_timer_on_cpu_is_an_error():
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        choose_timer("cuda_events", torch.device("cpu"))


def test_missing_trace_file_names_the_path(tmp_path):
    from finealign.profiling.traces import load_trace

    with pytest.raises(DataError, match="nope.json"):
        load_trace(tmp_path / "nope.json")
