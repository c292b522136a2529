"""Hydra's command-line habits for finealign's commands: `--cfg job|hydra|all`, `--info`,
`-m/--multirun` with comma lists (Hydra's basic sweeper: the cartesian product, one job per
combination, each in its own numbered directory, the sweep recorded in `<sweep dir>/multirun.yaml`),
`hydra.run.dir=...` / `hydra.sweep.dir=...`, and a personal config folder on the search path:
`--config-dir DIR` / `hydra.searchpath=[file://DIR,...]` (`DIR/aligner/my.yaml` → `aligner=my`).

finealign composes configs with Hydra's compose API (so sweeps and tests can compose many configs
in one process); this module reproduces the flags a Hydra user types on top of it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finealign.errors import ConfigError

if TYPE_CHECKING:  # omegaconf is imported where used: `finealign --help` stays quick
    from omegaconf import DictConfig


SWEEP_DIR_SHOWN = "multirun/<date>/<time>"  # what --cfg hydra shows for a sweep dir not given


def add_cfg_flags(parser: argparse.ArgumentParser, job: str = "the composed config") -> None:
    """`--cfg job|hydra|all` and `--resolve` (every command that composes a config has them)."""
    parser.add_argument(
        "--cfg",
        "-c",
        choices=("job", "hydra", "all"),
        default=None,
        help=f"print {job} (job; hydra: Hydra's node with the run/sweep directories; all: both) and exit",
    )
    parser.add_argument("--resolve", action="store_true", help="with --cfg: resolve interpolations")


def print_cfg(show: str, cfg: Any, hydra: Any = None, *, resolve: bool = False) -> None:
    """What `--cfg show` prints: the job's config (job), Hydra's node under `hydra:` (hydra), or
    both (all). `cfg` and `hydra` are DictConfigs or plain dicts; `resolve` applies to the job's
    config (Hydra's node refers to runtime values it does not have outside a run)."""
    from omegaconf import OmegaConf

    if show in ("job", "all"):
        print(OmegaConf.to_yaml(cfg, resolve=resolve), end="")
    if show in ("hydra", "all"):
        print(OmegaConf.to_yaml({"hydra": hydra if hydra is not None else {}}), end="")


def dirs_node(run_dir: str | None, sweep_dir: str | None = None) -> dict[str, Any]:
    """The run and sweep directories as Hydra's node holds them (what `--cfg hydra` shows)."""
    return {"run": {"dir": run_dir}, "sweep": {"dir": sweep_dir or SWEEP_DIR_SHOWN}}


def add_hydra_flags(parser: argparse.ArgumentParser) -> None:
    add_cfg_flags(parser)
    parser.add_argument("--info", action="store_true", help="print config search path, groups and their options")
    parser.add_argument(
        "--config-dir",
        "-cd",
        metavar="DIR",
        action="append",
        default=None,
        help="add a config folder to the search path (DIR/aligner/my.yaml → aligner=my); repeatable",
    )
    parser.add_argument(
        "--multirun",
        "-m",
        action="store_true",
        help="run every combination of comma-separated values (aligner=global,hard seed=0,1)",
    )


def with_config_dirs(overrides: list[str], config_dirs: list[str] | None) -> list[str]:
    """`overrides` with `--config-dir` folders put first on `hydra.searchpath` (merged with a
    `hydra.searchpath=[...]` the user also gave)."""
    if not config_dirs:
        return overrides
    from finealign.config import SEARCHPATH_KEY, searchpath_entries

    for folder in config_dirs:
        if not Path(folder).expanduser().is_dir():
            raise ConfigError(f"--config-dir {folder}: not a folder")
    given = searchpath_entries(overrides)
    entries = [f"file://{Path(d).expanduser().resolve()}" for d in config_dirs] + given
    rest = [o for o in overrides if o.lstrip("+").partition("=")[0] != SEARCHPATH_KEY]
    return [f"{SEARCHPATH_KEY}=[{','.join(entries)}]", *rest]


def run_dirs(overrides: list[str]) -> tuple[list[str], str | None, str | None]:
    """(overrides without hydra.run.dir / hydra.sweep.dir, run dir, sweep dir); hydra.searchpath
    stays (finealign.config.compose reads it)."""
    rest, run_dir, sweep_dir = [], None, None
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "hydra.run.dir":
            run_dir = value
        elif key == "hydra.sweep.dir":
            sweep_dir = value
        elif key.lstrip("+") == "hydra.searchpath":
            rest.append(o)
        elif key.startswith("hydra."):
            raise ConfigError(
                f"{key!r}: finealign honours hydra.run.dir, hydra.sweep.dir and hydra.searchpath; "
                "other hydra.* keys do nothing"
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
    from finealign.overrides import expand_sweeps

    combos = expand_sweeps(overrides)
    root = Path(sweep_dir or Path("multirun") / _dt.datetime.now().strftime("%Y-%m-%d/%H-%M-%S"))
    return [(list(combo), str(root / str(i))) for i, combo in enumerate(combos)]


def write_multirun_record(
    planned: list[tuple[list[str], str | None]],
    cfg: DictConfig,
    hydra: DictConfig | None,
    overrides: list[str],
    job: str,
) -> None:
    """`<sweep dir>/multirun.yaml` as Hydra's multirun leaves it, for the jobs of `jobs(..., multirun=True)`:
    the first job's config `cfg` with the `hydra:` node of the sweep (its composition's node, or
    what is known without one: mode MULTIRUN, the sweep dir, the job name, the overrides as typed,
    comma lists included). Every `-m` command (train, eval, profile, cache) writes it before its
    first job runs."""
    from omegaconf import OmegaConf, open_dict

    first = planned[0][1]
    if first is None:
        raise ValueError("write_multirun_record takes the jobs of a multirun (each has a numbered directory)")
    sweep_dir = Path(first).parent
    node = OmegaConf.create({}) if hydra is None else hydra.copy()
    with open_dict(node):
        node.merge_with({"mode": "MULTIRUN", "sweep": {"dir": str(sweep_dir)}, "overrides": {"task": overrides},
                         "job": {"name": job}})  # fmt: skip
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "multirun.yaml").write_text(OmegaConf.to_yaml({"hydra": node, **OmegaConf.to_container(cfg)}))  # type: ignore[dict-item]


def print_info(config_name: str, overrides: list[str] | None = None) -> None:
    from finealign.config import config_groups, config_roots, plugin_config_packages, searchpath_roots

    extra = searchpath_roots(overrides or [])
    print(f"Config search path (primary config {config_name!r}):")
    for r in config_roots(extra):
        print(f"  {r}")
    print("Config groups (group: options):")
    for name, options in config_groups(extra).items():
        print(f"  {name}: {', '.join(sorted(options))}")
    print(f"Plugin config packages: {', '.join(plugin_config_packages()) or '(none)'}")
