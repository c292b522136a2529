"""Hydra's command-line habits for finealign's commands: `--cfg job|hydra|all`, `--info`,
`-m/--multirun` with comma lists (Hydra's basic sweeper: the cartesian product, one job per
combination, each in its own numbered directory), `hydra.run.dir=...` / `hydra.sweep.dir=...`.

finealign composes configs with Hydra's compose API (so sweeps and tests can compose many configs
in one process); this module reproduces the flags a Hydra user types on top of it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path

from finealign.errors import ConfigError
from finealign.overrides import expand_sweeps


def add_hydra_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cfg",
        "-c",
        choices=("job", "hydra", "all"),
        default=None,
        help="print the composed config (job; hydra: the run/sweep directories; all: both) and exit",
    )
    parser.add_argument("--resolve", action="store_true", help="with --cfg: resolve interpolations")
    parser.add_argument("--info", action="store_true", help="print config search path, groups and their options")
    parser.add_argument(
        "--multirun",
        "-m",
        action="store_true",
        help="run every combination of comma-separated values (aligner=global,hard seed=0,1)",
    )


def run_dirs(overrides: list[str]) -> tuple[list[str], str | None, str | None]:
    """(overrides without hydra.run.dir / hydra.sweep.dir, run dir, sweep dir)."""
    rest, run_dir, sweep_dir = [], None, None
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "hydra.run.dir":
            run_dir = value
        elif key == "hydra.sweep.dir":
            sweep_dir = value
        elif key.startswith("hydra."):
            raise ConfigError(
                f"{key!r}: finealign honours hydra.run.dir and hydra.sweep.dir; other hydra.* keys do nothing"
            )
        else:
            rest.append(o)
    return rest, run_dir, sweep_dir


def jobs(
    overrides: list[str], multirun: bool, sweep_dir: str | None, run_dir: str | None = None
) -> list[tuple[list[str], str | None]]:
    """(overrides, output dir or None) per job: one job (in `run_dir`, hydra.run.dir, if given), or
    the cartesian product of comma lists, each in a numbered directory of the sweep dir. A directory
    flag that this mode would ignore is a ConfigError (never a run written somewhere else)."""
    if multirun and run_dir:
        raise ConfigError("hydra.run.dir names one run's directory; with -m every job gets a numbered directory "
                          "under hydra.sweep.dir: use hydra.sweep.dir=DIR")  # fmt: skip
    if not multirun and sweep_dir:
        raise ConfigError("hydra.sweep.dir applies to -m/--multirun only; for one run use hydra.run.dir=DIR")
    if not multirun:
        return [(overrides, run_dir)]
    combos = expand_sweeps(overrides)
    root = Path(sweep_dir or Path("multirun") / _dt.datetime.now().strftime("%Y-%m-%d/%H-%M-%S"))
    return [(list(combo), str(root / str(i))) for i, combo in enumerate(combos)]


def print_info(config_name: str) -> None:
    from finealign.config import config_groups, config_roots, plugin_config_packages

    print(f"Config search path (primary config {config_name!r}):")
    for r in config_roots():
        print(f"  {r}")
    print("Config groups (group: options):")
    for name, options in config_groups().items():
        print(f"  {name}: {', '.join(sorted(options))}")
    print(f"Plugin config packages: {', '.join(plugin_config_packages()) or '(none)'}")
