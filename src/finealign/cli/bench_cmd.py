"""`finealign bench [protocol=NAME] [protocol.KEY=VALUE ...] [overrides...]`: the citable comparison.

Tunes every method of the protocol on validation with an equal budget, retrains each best config
with the shared seeds, tests once, and writes the report (see docs/protocol.md). Resumable: run
the same command again after a stop. Workers: start it N times (processes, machines) on one
--storage and --out; they split the tuning trials and final runs through the storage.

    finealign bench                                   # configs/protocol/flickr8k.yaml
    finealign bench protocol=toy                      # seconds, on synthetic data
    finealign bench --methods global,hard             # a subset now, the rest later
    finealign bench --factors none                    # the bases only; --factors head,loss: those cells
    finealign bench --storage postgresql://... --out /shared/bench   # one of N workers
    finealign bench --adopt-config-changes            # resume although configs/ was edited meanwhile
    finealign bench --cfg job protocol=toy            # each method's base-run config; runs nothing
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finealign.cli.hydra_flags import add_cfg_flags, print_cfg

if TYPE_CHECKING:
    from finealign.protocol.outputs import ProtocolReport
    from finealign.protocol.spec import ProtocolSpec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides", nargs="*",
        help="protocol=NAME picks configs/protocol/NAME.yaml (default: flickr8k); protocol.KEY=VALUE edits it "
        "(e.g. protocol.tune.n_trials=8); any other KEY=VALUE is added to every run",
    )  # fmt: skip
    parser.add_argument("--storage", default=None, help="Optuna RDB URL (default: sqlite:///runs/bench/STUDY.db)")
    parser.add_argument("--out", type=Path, default=None, help="protocol folder (default: runs/bench/STUDY)")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the protocol's methods to run now")
    parser.add_argument(
        "--factors", default=None,
        help="comma-separated factors whose levels to run now (the bases always run); 'none': the bases only",
    )  # fmt: skip
    parser.add_argument(
        "--no-wait", action="store_true",
        help="when the rest is held by other workers, say who holds it and stop (default: wait for them, so "
        "that a dead worker's runs are taken over, then write the complete report)",
    )  # fmt: skip
    parser.add_argument(
        "--adopt-config-changes", action="store_true",
        help="resume although configs/ changed since the protocol started (its runs compose from the snapshot "
        "OUT/config-snapshot/ taken then; without this flag a changed tree is refused, naming the files)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or per-run lines")
    add_cfg_flags(parser, "each method's base-run config, under the method's name")


def run(args: argparse.Namespace) -> int:
    from finealign.protocol.loader import load_protocol
    from finealign.protocol.run import DEFAULT_ROOT, default_storage, run_worker

    spec, extra = load_protocol(args.overrides)
    methods = _names(args.methods)
    factors = None if args.factors is None else [] if args.factors.strip() == "none" else _names(args.factors)
    out = args.out or DEFAULT_ROOT / spec.study
    if args.cfg:
        show_configs(args.cfg, spec, extra, out, methods, resolve=args.resolve)
        return 0
    storage = args.storage or default_storage(spec.study, out.parent)
    _, did = run_worker(spec, extra, storage=storage, out_dir=out, methods=methods, factors=factors,
                        progress=not args.no_progress, wait=not args.no_wait,
                        adopt_config_changes=args.adopt_config_changes)  # fmt: skip
    from finealign.protocol.outputs import write_protocol_report  # noqa: PLC0415  (after the long part)

    report = write_protocol_report(out, storage)
    print(report.markdown)
    print(report_files(report))
    print(f"this worker: {did.tuning_trials} tuning trials, {did.finals} final runs, waited {did.waited_s:.0f} s"
          + (f"; held by other workers: {', '.join(did.held_by_others)}" if did.held_by_others else ""))  # fmt: skip
    return 0


def show_configs(
    show: str, spec: ProtocolSpec, extra: tuple[str, ...], out: Path, methods: list[str] | None, *, resolve: bool
) -> None:
    """`bench --cfg`: each method's base run as its tuning trials compose it (the protocol's, the
    command line's and the method's overrides, on the validation split), under the method's name;
    the keys the protocol tunes show their config defaults and are named in a comment. Hydra's node
    is the first method's, with the protocol folder as the sweep directory."""
    from omegaconf import OmegaConf, open_dict

    from finealign.config import compose_with_hydra
    from finealign.protocol.recipe import tune_overrides

    job: dict[str, Any] = {}
    hydra = None
    for method in [spec.method(name) for name in methods] if methods else spec.methods:
        cfg, node = compose_with_hydra(spec.experiment, tune_overrides(spec, method, extra))
        job[method.name] = OmegaConf.to_container(cfg, resolve=resolve)  # resolved alone: ${...} are absolute
        hydra = hydra or node
    assert hydra is not None  # a protocol has at least one method
    with open_dict(hydra):
        hydra.merge_with({"mode": "MULTIRUN", "sweep": {"dir": str(out)}})
    if show in ("job", "all"):
        tuned = ", ".join(p.name for p in spec.shared) or "nothing"
        own = "; ".join(f"{m.name}: {', '.join(p.name for p in m.params)}" for m in spec.methods if m.params)
        print(f"# protocol {spec.study!r}: each method's base run as its tuning trials compose it; tuned (shown at "
              f"their defaults): {tuned}{f'; {own}' if own else ''}")  # fmt: skip
    print_cfg(show, job, hydra, resolve=resolve)


def _names(text: str | None) -> list[str] | None:
    return [m.strip() for m in text.split(",") if m.strip()] if text else None


def report_files(report: ProtocolReport) -> str:
    """The lines naming what the report wrote (bench and report print them)."""
    lines = [f"\ntables: {report.csv}  {report.md}  {report.tex}", f"plot: {report.plot or '(no plot yet)'}",
             f"tuning curves: {report.tuning or '(no trial yet)'}"]  # fmt: skip
    if report.ablation is not None:
        a = report.ablation
        lines += [f"ablation: {a.csv}  {a.md}  {a.tex}", f"forest plot: {a.forest or '(nothing to compare yet)'}"]
    return "\n".join(lines)
