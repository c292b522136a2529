"""`finealign report STUDY [--storage URL]`: rebuild a sweep's table, CSV and plot from storage."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="study name")
    parser.add_argument("--storage", default=None, help="Optuna RDB URL (default: sqlite:///runs/sweeps/STUDY.db)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: runs/sweeps/STUDY)")


def run(args: argparse.Namespace) -> int:
    from finealign.sweeps import load_report

    report = load_report(args.study, storage=args.storage, out_dir=args.out)
    print(report.markdown)
    print(f"\ntable: {report.csv}  plot: {report.plot or '(no plot: trials lack the plot metrics)'}")
    return 0
