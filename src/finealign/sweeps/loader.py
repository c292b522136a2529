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

from finealign.checks import did_you_mean
from finealign.errors import ConfigError
from finealign.sweeps.spec import SweepSpec
from finealign.sweeps.spec_parts import override_key


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


def load_group_file(group: str, name: str, edits: Iterable[str]) -> dict[str, Any]:
    """The contents of the spec file `GROUP/NAME.yaml` (a sweep or a protocol) with its own
    `GROUP.KEY=VALUE` edits applied, found through `config.group_options`: finealign's tree
    first, then every plugin's config folder, so a plugin can ship a sweep or a protocol."""
    from finealign.config import compose, config_dir, group_options

    edits = list(edits)
    options = group_options(group)
    if name not in options:
        raise ConfigError(
            f"no {group} config {name!r} in {config_dir() / group} or plugin configs."
            f"{did_you_mean(name, options)} Available: {', '.join(sorted(options)) or 'none'}"
        )
    if (config_dir() / group / f"{name}.yaml").is_file():
        cfg = compose(f"{group}/{name}", edits)
        # a DictConfig gives a dict
        return cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True)).get(group, {})
    # a plugin's file: Hydra finds primary configs in the main tree only
    node = OmegaConf.merge(OmegaConf.load(options[name]), OmegaConf.from_dotlist([o[len(group) + 1 :] for o in edits]))
    return cast("dict[str, Any]", OmegaConf.to_container(node, resolve=True))


def load_sweep(args: Iterable[str] = ()) -> LoadedSweep:
    """Compose a sweep file with its overrides, validate it, and check that every option exists."""
    from finealign.config import config_roots

    name, sweep_overrides, extra = split_overrides(args)
    raw = load_group_file("sweep", name, sweep_overrides)
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
