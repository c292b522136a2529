"""`finealign report NAME [--storage URL] [--out DIR]`: rebuild tables and plot from storage.

NAME is a protocol (`finealign bench`: runs/bench/NAME/ holds protocol.json) or a sweep study
(`finealign sweep`: runs/sweeps/NAME.db). A protocol's table comes as Markdown, CSV and LaTeX
(booktabs), with the accuracy–cost plot (seed error bars, latency IQR, Pareto front).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from finealign.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="protocol or sweep study name")
    parser.add_argument(
        "--storage", default=None, help="Optuna RDB URL (default: sqlite:///runs/bench/NAME.db or runs/sweeps/NAME.db)"
    )
    parser.add_argument(
        "--format",
        choices=("md", "csv", "latex"),
        default="md",
        help="what to print (every format is written to the report folder either way)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="report folder (default: runs/bench/NAME or runs/sweeps/NAME)"
    )


def check_database(url: str, what: str) -> None:
    """ConfigError when a SQLite storage names no file or an empty one: opening it would create an
    empty database (SQLite makes one on connect) and the report would be an empty table."""
    if not url.startswith("sqlite:///"):
        return  # a database server: the storage itself says whether it holds the study
    path = Path(url[len("sqlite:///") :])
    if not path.is_file():
        raise ConfigError(f"no database at {path} ({what}); pass --storage URL")
    if path.stat().st_size == 0:
        raise ConfigError(f"{path} is empty (0 bytes): no {what} was stored in it; pass --storage URL")


def check_holds_protocol(storage: str, protocol_dir: Path) -> None:
    """ConfigError when the storage holds no study of the protocol in `protocol_dir` (another
    protocol's or a sweep's database, a mistyped --storage): its report would be a table of
    methods "not tuned yet", with exit 0."""
    import optuna

    from finealign.protocol.outputs import stored_spec
    from finealign.protocol.run import existing_storage

    spec = stored_spec(protocol_dir)
    rdb = existing_storage(storage)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(rdb)) if rdb is not None else []
    if not any(name.startswith(f"{spec.study}-") for name in names):
        held = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") or "none"
        raise ConfigError(
            f"{storage} holds no study of the protocol {spec.study!r} of {protocol_dir} (it holds: {held}); "
            "pass the --storage its `finealign bench` used"
        )


def run(args: argparse.Namespace) -> int:
    from finealign.protocol.run import DEFAULT_ROOT, SPEC_FILE, default_storage
    from finealign.sweeps.storage import DEFAULT_ROOT as SWEEP_ROOT

    protocol_dir = args.out or DEFAULT_ROOT / args.study
    if (protocol_dir / SPEC_FILE).is_file():
        from finealign.cli.bench_cmd import report_files
        from finealign.protocol.outputs import write_protocol_report

        storage = args.storage or default_storage(args.study, protocol_dir.parent)
        check_database(storage, f"the protocol {args.study!r} of {protocol_dir}")
        check_holds_protocol(storage, protocol_dir)
        report = write_protocol_report(protocol_dir, storage)
        abl = report.ablation
        printed = {
            "md": report.markdown,
            "csv": report.csv.read_text() + (f"\n{abl.csv.read_text()}" if abl else ""),
            "latex": report.tex.read_text() + (f"\n{abl.tex.read_text()}" if abl else ""),
        }
        print(printed[args.format])
        print(report_files(report))
        return 0
    from finealign.sweeps import load_report

    if args.storage is not None or (SWEEP_ROOT / f"{args.study}.db").exists():
        check_database(args.storage or f"sqlite:///{(SWEEP_ROOT / f'{args.study}.db').resolve()}", "sweep")
    try:
        sweep = load_report(args.study, storage=args.storage, out_dir=args.out)
    except ConfigError as exc:
        missing = protocol_dir / SPEC_FILE
        raise ConfigError(f"{args.study!r} is no protocol ({missing} is missing) and no sweep: {exc}") from exc
    latex = sweep.tex.read_text() if sweep.tex else ""
    print({"md": sweep.markdown, "csv": sweep.csv.read_text(), "latex": latex}[args.format])
    plot = sweep.plot or "(no plot: trials lack the plot metrics)"
    print(f"\ntables: {sweep.csv}  {sweep.md}  {sweep.tex}  plot: {plot}")
    return 0
