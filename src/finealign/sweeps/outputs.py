"""Write a study's outputs: trials.csv, trials.md, tradeoff.png (from storage alone).

Files are written to a temporary name and renamed, so that parallel workers finishing together
(each writes the report when it stops) never leave a half-written file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from finealign.sweeps.plot import plot_tradeoff
from finealign.sweeps.results import summary_frame, to_markdown, trials_frame
from finealign.sweeps.study import stored_spec
from finealign.tables import to_booktabs


@dataclass
class SweepReport:
    frame: pd.DataFrame  # every trial, every metric
    markdown: str  # the printed summary table
    csv: Path
    md: Path
    plot: Path | None
    tex: Path | None = None  # the summary as a booktabs table


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}")


def write_report(study: optuna.Study, out_dir: Path) -> SweepReport:
    spec = stored_spec(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(study)
    markdown = to_markdown(summary_frame(frame, study))
    csv, md, png = out_dir / "trials.csv", out_dir / "trials.md", out_dir / "tradeoff.png"
    frame.to_csv(_temp(csv), index=False)
    os.replace(_temp(csv), csv)
    _temp(md).write_text(f"# Sweep {study.study_name}\n\n{markdown}\n")
    os.replace(_temp(md), md)
    tex = out_dir / "trials.tex"
    _temp(tex).write_text(to_booktabs(summary_frame(frame, study), caption=f"Sweep {study.study_name}"))
    os.replace(_temp(tex), tex)
    choices = list(spec["choices"])
    label = "aligner" if "aligner" in choices else (choices[0] if choices else None)
    plot = plot_tradeoff(frame, spec["plot_x"], spec["plot_y"], label, _temp(png), title=f"sweep {study.study_name}")
    if plot is not None:
        os.replace(plot, png)
        plot = png
    return SweepReport(frame=frame, markdown=markdown, csv=csv, md=md, plot=plot, tex=tex)
