"""Write a protocol's outputs from storage alone: protocol.csv (every number), protocol.md,
protocol.tex (booktabs), tradeoff.png (RSUM over seeds vs scoring cost, Pareto front),
tuning.png (best-so-far validation metric per tuning study); with factors also ablation.csv,
ablation.md, ablation.tex and forest.png."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.storages import RDBStorage

from finealign.errors import ConfigError
from finealign.protocol import ablation
from finealign.protocol.cells import cells, study_name, tuning_cell
from finealign.protocol.plot import plot_forest, plot_protocol, plot_tuning
from finealign.protocol.run import SPEC_FILE, MethodOutcome, existing_storage, stored_cell_outcomes, write_atomic
from finealign.protocol.spec import ProtocolSpec
from finealign.protocol.table import protocol_frame, to_latex, to_markdown


@dataclass
class AblationReport:
    frame: pd.DataFrame
    markdown: str
    csv: Path
    md: Path
    tex: Path
    forest: Path | None


@dataclass
class ProtocolReport:
    frame: pd.DataFrame
    markdown: str  # the main table, its legend, and the ablation's tables when the protocol has factors
    csv: Path
    md: Path
    tex: Path
    plot: Path | None
    tuning: Path | None = None
    ablation: AblationReport | None = None


def stored_spec(out_dir: Path) -> ProtocolSpec:
    """The spec a protocol directory was started with (protocol.json)."""
    path = Path(out_dir) / SPEC_FILE
    if not path.is_file():
        raise ConfigError(f"{out_dir} is not a protocol directory (no {SPEC_FILE}); run `finealign bench` first")
    return ProtocolSpec.from_record(json.loads(path.read_text())["spec"])


def tuning_curves(spec: ProtocolSpec, storage: str | RDBStorage) -> dict[str, list[tuple[int, float]]]:
    """(trial number, validation value) of every complete trial, per tuning study that exists."""
    rdb = existing_storage(storage)
    if rdb is None:
        return {}
    present = {s.study_name for s in optuna.get_all_study_summaries(rdb)}
    curves: dict[str, list[tuple[int, float]]] = {}
    for cell in dict.fromkeys(tuning_cell(spec, c) for c in cells(spec)):
        name = study_name(spec, cell)
        if name in present:
            trials = optuna.load_study(study_name=name, storage=rdb).get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
            )
            curves[cell.label] = [(t.number, float(t.value)) for t in trials if t.value is not None]
    return curves


def _sampler(spec: ProtocolSpec) -> str:
    t = spec.tune
    return f"tpe, the first {min(t.n_startup_trials, t.n_trials)} random" if t.sampler == "tpe" else t.sampler


def write_ablation_report(spec: ProtocolSpec, outcomes: list[MethodOutcome], out_dir: Path) -> AblationReport:
    frame = ablation.ablation_frame(spec, outcomes)
    markdown = ablation.to_markdown(frame, spec.reference)
    csv, md, tex = out_dir / "ablation.csv", out_dir / "ablation.md", out_dir / "ablation.tex"
    write_atomic(csv, frame.to_csv(index=False))
    legend = ablation.legend(spec)
    write_atomic(md, f"# Ablation {spec.study}\n\n{markdown}\n\n{legend}\n")
    write_atomic(tex, ablation.to_latex(frame, spec.reference, caption=legend))
    forest = plot_forest(frame, out_dir / "forest.png", spec.reference, title=f"ablation {spec.study}")
    return AblationReport(frame=frame, markdown=markdown + "\n\n" + legend, csv=csv, md=md, tex=tex, forest=forest)


def write_protocol_report(out_dir: Path, storage: str) -> ProtocolReport:
    out_dir = Path(out_dir)
    spec = stored_spec(out_dir)
    rdb = existing_storage(storage)
    outcomes = stored_cell_outcomes(spec, rdb if rdb is not None else storage, out_dir)
    frame = protocol_frame(spec, [o for o in outcomes if o.cell is None or o.cell.is_base])
    markdown = to_markdown(frame, spec.reference)
    csv, md, tex = out_dir / "protocol.csv", out_dir / "protocol.md", out_dir / "protocol.tex"
    write_atomic(csv, frame.to_csv(index=False))
    b = spec.bootstrap
    legend = (
        f"{spec.tune.n_trials} tuning trials per method ({_sampler(spec)}, validation {spec.tune.metric}); "
        f"seeds {list(spec.seeds)} for every method; test metrics mean ± std over seeds; Δ = paired bootstrap "
        f"{100 * b.confidence:.0f}% CI vs {spec.reference} ({b.resamples} resamples of test images with their "
        "captions, seeds pooled; * = excludes 0); costs: median [IQR] per image query over the first seed's "
        "repeats, × global / × floor = ratio to the pooled matmul (global retrieval; – for global itself) / the "
        "all-token-pairs BLAS product timed alongside."
    )
    write_atomic(md, f"# Protocol {spec.study}\n\n{markdown}\n\n{legend}\n")
    write_atomic(tex, to_latex(frame, spec.reference, caption=f"{spec.study}: {legend}", study=spec.study))
    plot = plot_protocol(frame, out_dir / "tradeoff.png", title=f"protocol {spec.study}")
    tuning = plot_tuning(tuning_curves(spec, rdb) if rdb is not None else {}, out_dir / "tuning.png", spec.tune.metric,
                         title=f"tuning {spec.study}: {spec.tune.n_trials} trials per study ({_sampler(spec)})")  # fmt: skip
    text = markdown + "\n\n" + legend
    abl = write_ablation_report(spec, outcomes, out_dir) if spec.factors else None
    if abl is not None:
        text += "\n\n## Ablation\n\n" + abl.markdown
    return ProtocolReport(frame=frame, markdown=text, csv=csv, md=md, tex=tex, plot=plot, tuning=tuning, ablation=abl)
