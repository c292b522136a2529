"""Traces load as JSON, reports and plots are written, and the CLI runs end to end."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from finealign.errors import ConfigError, DataError
from finealign.profiling.inputs import ProblemShape, random_input_sets
from finealign.profiling.measure import aligner_step, build_aligner
from finealign.profiling.outputs import join_eval, plot_recall_vs_latency, plot_scaling, write_table
from finealign.profiling.traces import capture_trace, load_trace

CPU = torch.device("cpu")


def test_trace_files_are_written_and_parse(tmp_path):
    aligner = build_aligner("mean_max", 8)
    sets = random_input_sets(ProblemShape(nv=3, nt=5, lv=4, lt=3, dim=8), 2, CPU, torch.float32)
    result = capture_trace(aligner_step(aligner, backward=False), sets, CPU, tmp_path / "tb", steps=2, worker_name="mm")
    assert len(result.files) == 1 and result.files[0].name.endswith(".pt.trace.json")
    trace = load_trace(result.files[0])
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any(n.startswith("aten::") for n in names)
    assert result.top_ops and all(r["self_cpu_ms"] >= 0 for r in result.top_ops)
    times = [r["self_cpu_ms"] for r in result.top_ops]
    assert times == sorted(times, reverse=True)


def test_load_trace_rejects_non_traces(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(DataError, match="traceEvents"):
        load_trace(path)


def test_tables_and_scaling_plot_are_written(tmp_path):
    rows = [
        {"aligner": a, "axis": "n", "x": n, "latency_ms": c * n**2, "error": ""}
        for a, c in (("a", 1.0), ("b", 0.1))
        for n in (4, 8, 16)
    ]
    csv_path, md_path = write_table(rows, tmp_path, "scaling")
    assert csv_path.read_text().splitlines()[0].startswith("aligner,")
    assert "| aligner" in md_path.read_text()
    png = plot_scaling(rows, tmp_path / "latency_vs_n.png", "n")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recall_vs_latency_joins_on_aligner(tmp_path):
    profile = [
        {"aligner": "hard", "latency_ms": 3.0, "error": ""},
        {"aligner": "global", "latency_ms": 0.5, "error": ""},
        {"aligner": "broken", "error": "boom"},
    ]
    evals = tmp_path / "eval.json"
    evals.write_text(
        json.dumps(
            [
                {"aligner": "hard", "rsum": 400.0},
                {"aligner": "global", "rsum": 350.0},
                {"aligner": "hard", "rsum": 390.0},
                {"aligner": "broken", "rsum": 1.0},
            ]
        )
    )
    joined = join_eval(evals, profile).set_index("aligner")
    assert joined.loc["hard", "rsum"] == 400.0 and joined.loc["global", "latency_ms"] == 0.5
    assert "broken" not in joined.index
    png = plot_recall_vs_latency(evals, profile, tmp_path / "rl.png")
    assert png.stat().st_size > 0
    with pytest.raises(DataError, match="no 'r1' column"):
        join_eval(evals, profile, metric="r1")


def _cli(argv):
    from finealign.cli import profile_cmd

    parser = argparse.ArgumentParser()
    profile_cmd.add_arguments(parser)
    return profile_cmd.run(parser.parse_args(argv))


def test_cli_profiles_and_writes_reports(tmp_path, capsys):
    out = tmp_path / "runs"
    code = _cli(
        [
            "aligners=[global,mean_max]",
            "nv=4",
            "nt=20",
            "lv=4",
            "lt=3",
            "dim=8",
            "repeats=2",
            "warmup=0",
            "threads=1",
            "scaling=n",
            "n_values=[2,4]",
            "progress=false",
            f"out={out}",
            "mean_max.direction=both",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "mean_max" in text and "global" in text and "torch:" in text
    (run_dir,) = [p for p in out.iterdir() if p.name != "traces"]
    for name in ("profile.csv", "profile.md", "scaling.csv", "scaling_fits.csv", "latency_vs_n.png", "top_ops.csv"):
        assert (run_dir / name).is_file(), name
    traces = sorted((out / "traces").glob("*/*/*.pt.trace.json"))
    assert len(traces) == 2 and all(load_trace(p)["traceEvents"] for p in traces)


def test_cli_rejects_unknown_keys_with_a_hint():
    with pytest.raises(ConfigError, match="Did you mean 'repeats'"):
        _cli(["repeat=3"])
    with pytest.raises(ConfigError, match="aligners=NAME"):
        _cli(["aligner=hard"])
    with pytest.raises(ConfigError, match="n_values must be null or a list of positive ints"):
        _cli(["n_values=[0,4]", "trace=false"])
    with pytest.raises(ConfigError, match="unknown scaling axis 'size'"):
        _cli(["scaling=[n,size]", "trace=false"])
    with pytest.raises(ConfigError, match="tpu"):
        _cli(["aligners=global", "device=tpu", "trace=false"])
