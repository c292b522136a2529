"""Write a protocol's outputs from storage alone: protocol.csv (every number), protocol.md,
protocol.tex (booktabs) and tradeoff.png (RSUM over seeds vs scoring cost, Pareto front)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from finealign.errors import ConfigError
from finealign.protocol.plot import plot_protocol
from finealign.protocol.run import SPEC_FILE, stored_outcomes
from finealign.protocol.spec import BootstrapSpec, MethodSpec, ProtocolSpec, TuneSpec
from finealign.protocol.table import protocol_frame, to_latex, to_markdown
from finealign.sweeps.spec import ParamSpec
from finealign.sweeps.storage import with_available_driver


@dataclass
class ProtocolReport:
    frame: pd.DataFrame
    markdown: str
    csv: Path
    md: Path
    tex: Path
    plot: Path | None


def _params(raw: list[dict[str, Any]]) -> tuple[ParamSpec, ...]:
    return tuple(
        ParamSpec(**{**p, "values": tuple(p.get("values") or ()), "grid": tuple(p.get("grid") or ())}) for p in raw
    )


def stored_spec(out_dir: Path) -> ProtocolSpec:
    """The spec a protocol directory was started with (protocol.json)."""
    path = Path(out_dir) / SPEC_FILE
    if not path.is_file():
        raise ConfigError(f"{out_dir} is not a protocol directory (no {SPEC_FILE}); run `finealign bench` first")
    d = json.loads(path.read_text())["spec"]
    return ProtocolSpec(
        study=d["study"],
        methods=tuple(MethodSpec(m["name"], tuple(m["overrides"]), _params(m["params"])) for m in d["methods"]),
        shared=_params(d["shared"]),
        tune=TuneSpec(**{**d["tune"], "overrides": tuple(d["tune"]["overrides"])}),
        seeds=tuple(d["seeds"]), reference=d["reference"], overrides=tuple(d["overrides"]),
        test_overrides=tuple(d["test_overrides"]), cost_overrides=tuple(d["cost_overrides"]),
        experiment=d["experiment"], objective=d["objective"], bootstrap=BootstrapSpec(**d["bootstrap"]),
        heartbeat_s=d["heartbeat_s"],
    )  # fmt: skip


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_protocol_report(out_dir: Path, storage: str) -> ProtocolReport:
    out_dir = Path(out_dir)
    spec = stored_spec(out_dir)
    frame = protocol_frame(spec, stored_outcomes(spec, with_available_driver(storage), out_dir))
    markdown = to_markdown(frame, spec.reference)
    csv, md, tex = out_dir / "protocol.csv", out_dir / "protocol.md", out_dir / "protocol.tex"
    frame.to_csv(csv, index=False)
    b = spec.bootstrap
    legend = (
        f"{spec.tune.n_trials} tuning trials per method ({spec.tune.sampler}, validation {spec.tune.metric}); "
        f"seeds {list(spec.seeds)} for every method; test metrics mean ± std over seeds; Δ = paired bootstrap "
        f"{100 * b.confidence:.0f}% CI vs {spec.reference} ({b.resamples} resamples of test images with their "
        "captions, seeds pooled; * = excludes 0); costs: median [IQR] per image query over the first seed's "
        "repeats, × global / × floor = ratio to the pooled matmul / the all-token-pairs BLAS product timed alongside."
    )
    _write(md, f"# Protocol {spec.study}\n\n{markdown}\n\n{legend}\n")
    _write(tex, to_latex(frame, spec.reference, caption=f"{spec.study}: {legend}"))
    plot = plot_protocol(frame, out_dir / "tradeoff.png", title=f"protocol {spec.study}")
    return ProtocolReport(frame=frame, markdown=markdown + "\n\n" + legend, csv=csv, md=md, tex=tex, plot=plot)
