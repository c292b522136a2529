"""`finealign sweep [sweep=NAME] [overrides...] [--storage URL] [--study NAME] [--n-trials N]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from finealign.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides", nargs="*",
        help="sweep=NAME picks configs/sweep/NAME.yaml (default: default); sweep.KEY=VALUE edits the "
        "sweep (e.g. sweep.sampler=tpe); any other KEY=VALUE is fixed for every trial (e.g. data=toy)",
    )  # fmt: skip
    parser.add_argument("--storage", default=None, help="Optuna RDB URL (default: sqlite:///runs/sweeps/STUDY.db)")
    parser.add_argument("--study", default=None, help="study name (default: the sweep file's `study`)")
    parser.add_argument("--n-trials", type=int, default=None, help="study-wide number of trials (grid: cap)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: runs/sweeps/STUDY)")
    parser.add_argument("--worker-id", type=int, default=0, help="give parallel workers distinct ids (sampler seeds)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--adopt-config-changes", action="store_true",
        help="resume although configs/ changed since the sweep started (its trials compose from the snapshot "
        "OUT/config-snapshot/ taken then; without this flag a changed tree is refused, naming the files)",
    )  # fmt: skip
    parser.add_argument(
        "--cfg",
        "-c",
        choices=("job",),
        default=None,
        help="print the validated sweep (search space, objectives, fixed overrides) and exit",
    )
    parser.add_argument("--info", action="store_true", help="print config search path, groups and their options")
    parser.add_argument("--multirun", "-m", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from finealign.sweeps import load_sweep, run_sweep

    if args.info:
        from finealign.cli.hydra_flags import print_info

        print_info("config")
        return 0
    ignored = [o for o in args.overrides if o.lstrip("+~").startswith(("hydra.run.", "hydra.sweep.", "hydra.job."))]
    if ignored:
        raise ConfigError(f"{', '.join(ignored)}: a sweep writes each trial to <--out>/trial_NNNN (default "
                          "runs/sweeps/STUDY/); Hydra's directory settings do nothing here")  # fmt: skip
    if args.multirun:
        raise ConfigError("a sweep is already many runs (Optuna trials): drop -m; list choices in the sweep's "
                          "search space, or use finealign train -m for a plain grid")  # fmt: skip
    if args.cfg:
        import yaml

        loaded = load_sweep(list(args.overrides))
        print(yaml.safe_dump({"sweep": loaded.spec.to_dict(), "trial_overrides": list(loaded.trial_overrides)},
                             sort_keys=False), end="")  # fmt: skip
        return 0

    result = run_sweep(
        list(args.overrides), storage=args.storage, study_name=args.study, n_trials=args.n_trials,
        out_dir=args.out, progress=not args.no_progress, worker_id=args.worker_id,
        adopt_config_changes=args.adopt_config_changes,
    )  # fmt: skip
    report = result.report
    assert report is not None  # run_sweep writes the report unless told not to
    print(report.markdown)
    s = result.stats
    print(f"\nthis worker: {s.complete} complete, {s.pruned} pruned, {s.failed} failed")
    print(f"storage: {result.storage_url}  study: {result.study.study_name}")
    print(f"table: {report.csv}  plot: {report.plot or '(no plot: trials lack the plot metrics)'}")
    return 0
