"""Copy a finished protocol's record into benchmarks/results/: the report (CSV, Markdown, LaTeX,
plots; the ablation's too), protocol.json, every final run's results.json and ranks.npz (factor
levels included), and the tuning trials (the finals study's trials say who ran each final).

    PYTHONPATH=src python benchmarks/export_protocol.py runs/bench/flickr8k_protocol \
        benchmarks/results/flickr8k-protocol-2026-12-01
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import optuna
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protocol_dir", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--storage", default=None, help="default: sqlite:///<protocol_dir>.db")
    args = parser.parse_args()
    src, dst = args.protocol_dir, args.target
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("protocol.csv", "protocol.md", "protocol.tex", "tradeoff.png", "tuning.png", "protocol.json",
                 "ablation.csv", "ablation.md", "ablation.tex", "forest.png"):  # fmt: skip
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    for run in sorted(src.glob("final/**/seed_*")):
        out = dst / run.relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", "ranks.npz", "error.txt"):
            if (run / name).is_file():
                shutil.copy2(run / name, out / name)
    storage = args.storage or f"sqlite:///{src.with_suffix('.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.trials:
            duration = t.duration.total_seconds() if t.duration else None
            rows.append({"study": summary.study_name, "trial": t.number, "state": t.state.name, "val_rsum": t.value,
                         "duration_s": duration, **t.params, "error": t.user_attrs.get("error", "")[:200],
                         "worker": t.user_attrs.get("worker", ""), "run": t.user_attrs.get("run", "")})  # fmt: skip
    pd.DataFrame(rows).to_csv(dst / "tuning_trials.csv", index=False)
    print(f"exported {src} → {dst} ({len(rows)} tuning trials)")


if __name__ == "__main__":
    main()
