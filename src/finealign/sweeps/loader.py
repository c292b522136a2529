"""Load `configs/sweep/NAME.yaml` through Hydra and split command-line overrides.

`finealign sweep sweep=toy sweep.sampler=tpe data=toy train.epochs=2`:
  - `sweep=NAME` picks the file (default: `default`),
  - `sweep.KEY=VALUE` changes the sweep itself (Hydra places the file under the `sweep` package),
  - everything else is a fixed override added to every trial's experiment config.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from omegaconf import OmegaConf

from finealign.errors import ConfigError
from finealign.sweeps.spec import SweepSpec, override_key


@dataclass(frozen=True)
class LoadedSweep:
    spec: SweepSpec
    trial_overrides: tuple[str, ...]  # the file's fixed overrides, then the command line's


def split_group_overrides(args: Iterable[str], group: str, default: str) -> tuple[str, list[str], list[str]]:
    """For a file-driven command (`sweep`, `protocol`): (file name from `GROUP=NAME`, the file's own
    `GROUP.KEY=VALUE` edits, every other override)."""
    name, own, rest = default, [], []
    for arg in args:
        if "=" not in arg and not arg.startswith("~"):
            raise ConfigError(f"override {arg!r} is not KEY=VALUE")
        key = override_key(arg)
        if key == group:
            name = arg.split("=", 1)[1]
        elif key.startswith(f"{group}."):
            own.append(arg)
        else:
            rest.append(arg)
    return name, own, rest


def split_overrides(args: Iterable[str]) -> tuple[str, list[str], list[str]]:
    """(sweep name, overrides of the sweep file, fixed overrides of every trial)."""
    return split_group_overrides(args, "sweep", "default")


def merge_overrides(base: Iterable[str], extra: Iterable[str]) -> tuple[str, ...]:
    """Later overrides of the same key replace earlier ones (Hydra rejects a key given twice)."""
    merged: dict[str, str] = {}
    for o in [*base, *extra]:
        merged.pop(override_key(o), None)
        merged[override_key(o)] = o
    return tuple(merged.values())


def available_sweeps() -> list[str]:
    from finealign.config import group_options

    return sorted(group_options("sweep"))


def load_sweep(args: Iterable[str] = ()) -> LoadedSweep:
    """Compose a sweep file with its overrides, validate it, and check that every option exists."""
    from finealign.config import compose, config_dir, config_roots, group_options

    name, sweep_overrides, extra = split_overrides(args)
    if name not in available_sweeps():
        raise ConfigError(
            f"no sweep config {name!r} in {config_dir() / 'sweep'} or plugin configs "
            f"(available: {', '.join(available_sweeps())})"
        )
    own = config_dir() / "sweep" / f"{name}.yaml"
    if own.is_file():
        cfg = compose(f"sweep/{name}", sweep_overrides)
        raw = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True)).get(
            "sweep", {}
        )  # a DictConfig gives a dict
    else:  # a plugin's sweep file: Hydra finds primary configs in the main tree only
        path = group_options("sweep")[name]
        node = OmegaConf.merge(
            OmegaConf.load(path), OmegaConf.from_dotlist([o[len("sweep.") :] for o in sweep_overrides])
        )
        raw = OmegaConf.to_container(node, resolve=True)
    spec = SweepSpec.from_dict(raw)
    check_options_exist(spec, config_roots())
    trial_overrides = merge_overrides(spec.overrides, extra)
    for o in extra:
        key = override_key(o)
        if key in spec.choices or key in {p.name for p in spec.all_params()}:
            raise ConfigError(f"override {o!r} sets {key!r}, which sweep {name!r} varies; drop it or edit the sweep")
    return LoadedSweep(spec=spec, trial_overrides=trial_overrides)


def check_options_exist(spec: SweepSpec, roots: Path | list[Path]) -> None:
    """Every `choose` option must be a config file of its group (`aligner=hard` → aligner/hard.yaml)
    in finealign's tree or a plugin's config folder."""
    roots = [roots] if isinstance(roots, Path) else list(roots)
    for group, options in spec.choices.items():
        folders = [root / group.replace(".", "/") for root in roots]
        known = sorted({p.stem for folder in folders for p in folder.glob("*.yaml")})
        if not known:
            raise ConfigError(f"choose.{group}: {folders[0]} is not a config group (no *.yaml files)")
        for option in options:
            if option not in known:
                raise ConfigError(f"choose.{group}: no option {option!r} in {folders[0]} or plugin configs "
                                  f"(options: {', '.join(known)})")  # fmt: skip
