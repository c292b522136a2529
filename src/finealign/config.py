"""Hydra configuration: where the config tree lives, composing it, and validating it up front.

The tree under `configs/` has one group per slot (encoder, aligner, loss, data, train). The slots
that hold a registered component (aligner, loss, data, encoder.vision, encoder.text) are free-form
(`name:` + that component's options); they are checked against the component's own `Config`
dataclass by `validate()` (through `finealign.registry.build_config`), so a bad value stops the run
with a ConfigError naming the key before any data is read or any step is trained.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf, open_dict

from finealign.checks import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_positive_int,
    check_text,
    did_you_mean,
    is_int,
)
from finealign.cost_defaults import COST_BATCH
from finealign.errors import ConfigError, UnknownNameError

#: environment variable that points finealign at another config tree
CONFIG_DIR_ENV = "FINEALIGN_CONFIG_DIR"


def config_dir() -> Path:
    """The directory holding `config.yaml` and the config groups.

    Order: $FINEALIGN_CONFIG_DIR; the repository's `configs/` (editable install); the copy that
    the wheel ships as `finealign/_configs`.
    """
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        path = Path(env).expanduser().resolve()
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"{CONFIG_DIR_ENV}={env} has no config.yaml")
        return path
    import finealign

    package = Path(finealign.__file__).resolve().parent
    for candidate in (package.parents[1] / "configs", package / "_configs"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError(
        f"no finealign config tree found (looked in {package.parents[1] / 'configs'} and "
        f"{package / '_configs'}); set {CONFIG_DIR_ENV}"
    )


#: entry-point group through which a plugin package adds config files (aligner/NAME.yaml, sweep/...)
CONFIG_ENTRY_POINTS = "finealign.configs"


def plugin_config_packages() -> list[str]:
    """Importable packages that plugins declare as config folders (entry point group
    `finealign.configs`, value = a package path such as `finealign_maxmax.configs`). Read from the
    distribution metadata: nothing is imported."""
    import importlib.metadata

    return sorted({ep.value for ep in importlib.metadata.entry_points(group=CONFIG_ENTRY_POINTS)})


def config_roots(extra: Iterable[Path] = ()) -> list[Path]:
    """finealign's config tree first, then the user's search-path folders (`extra`: --config-dir,
    hydra.searchpath), then every plugin's config folder (for listing options)."""
    import importlib.util

    roots = [config_dir(), *extra]
    for package in plugin_config_packages():
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"plugin config package {package!r} (entry point group {CONFIG_ENTRY_POINTS}) is not importable"
            )
        roots.extend(Path(p) for p in spec.submodule_search_locations)
    return roots


def group_options(group: str, extra: Iterable[Path] = ()) -> dict[str, Path]:
    """Option name → its file for one config group (`aligner` → {"hard": .../aligner/hard.yaml, ...}),
    over finealign's tree, the user's search-path folders and every plugin's config folder; the
    first root holding a name wins, as on Hydra's search path."""
    return _options_in(config_roots(extra), group)


def _options_in(roots: list[Path], group: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in roots:
        for path in sorted((root / group).glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def config_groups(extra: Iterable[Path] = ()) -> dict[str, dict[str, Path]]:
    """Every top-level config group (a folder of *.yaml in any root) with its options."""
    roots = config_roots(extra)
    names = {p.name for r in roots for p in r.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    return {name: options for name in sorted(names) if (options := _options_in(roots, name))}


def compose(config_name: str = "config", overrides: Iterable[str] = ()) -> DictConfig:
    """Compose the config like `finealign train key=value ...` would, via Hydra's compose API.

    Hydra's global state is cleared before and after, so this can be called repeatedly (sweeps,
    tests) and from inside a process that already used Hydra.
    """
    return compose_with_hydra(config_name, overrides)[0]


def compose_with_hydra(config_name: str = "config", overrides: Iterable[str] = ()) -> tuple[DictConfig, DictConfig]:
    """(the composed config, Hydra's own `hydra:` node for it: search path, group choices,
    overrides, job logging...), for the run record `.hydra/hydra.yaml`.

    finealign's layer on Hydra's: `method=` and group choices (`aligner=meanmax`) get "did you
    mean"; `aligner.name=X` composes X's own config; a `+key` that nothing reads is refused;
    `hydra.searchpath=[...]` (or `--config-dir DIR`) adds the user's config folders before the
    plugins' config packages.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    check_method_overrides(overrides)
    check_group_choices(overrides)
    overrides, renamed = _names_as_group_choices(overrides)
    _check_added_keys(config_name, overrides)
    overrides = _with_plugin_searchpath(overrides)
    for _ in range(len(overrides) + 1):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
                full = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
            with open_dict(full):
                hydra_node = full.pop("hydra")
            return _with_bare_components(full, renamed), hydra_node
        except (HydraException, OmegaConfBaseException) as exc:
            missing = _not_overridable(exc)
            adjusted = _into_free_form(overrides, missing)
            if adjusted is None:
                hint = _close_keys_hint(config_name, overrides, missing)
                raise ConfigError(
                    f"cannot compose config {config_name!r} with overrides {overrides}: {exc}{hint}"
                ) from exc
            overrides = adjusted
        finally:
            GlobalHydra.instance().clear()
    raise AssertionError("unreachable: every retry moves one override into a free-form dict")


SEARCHPATH_KEY = "hydra.searchpath"


def searchpath_entries(overrides: Iterable[str]) -> list[str]:
    """The entries of a `hydra.searchpath=[...]` override (Hydra's grammar), else []."""
    from finealign.overrides import parse

    for text in overrides:
        if text.lstrip("+").partition("=")[0] == SEARCHPATH_KEY:
            value = parse([text])[0].value()
            return [str(v) for v in (value if isinstance(value, list) else [value])]
    return []


def searchpath_roots(overrides: Iterable[str]) -> list[Path]:
    """The folders of the `hydra.searchpath` override's file:// (or plain path) entries."""
    roots = []
    for entry in searchpath_entries(overrides):
        if entry.startswith("pkg://"):
            continue
        path = Path(entry.removeprefix("file://")).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{SEARCHPATH_KEY} entry {entry!r}: {path} is not a folder")
        roots.append(path.resolve())
    return roots


def _with_plugin_searchpath(overrides: list[str]) -> list[str]:
    """One `hydra.searchpath` override: the user's folders (checked, as file://), then every
    plugin's config package, so `aligner=<plugin>` needs no copy of this tree."""
    user = [f"file://{p}" for p in searchpath_roots(overrides)]
    user += [e for e in searchpath_entries(overrides) if e.startswith("pkg://")]
    entries = [*user, *(f"pkg://{p}" for p in plugin_config_packages() if f"pkg://{p}" not in user)]
    rest = [o for o in overrides if o.lstrip("+").partition("=")[0] != SEARCHPATH_KEY]
    return [f"{SEARCHPATH_KEY}=[{','.join(entries)}]", *rest] if entries else rest


#: Top-level nodes whose keys a dataclass checks after composing (an unknown `+key` there gets
#: that dataclass's own "has no option" error with close matches).
CHECKED_NODES = ("aligner", "loss", "data", "train", "eval", "encoder.vision", "encoder.text")


def _check_added_keys(config_name: str, overrides: list[str]) -> None:
    """Refuse `+key=value` / `++key=value` adding a key nothing reads (Hydra adds it silently).

    New keys are allowed inside a component's or section's node (its dataclass checks them), in a
    sweep or protocol file's own node (`sweep.`, `protocol.`: its spec loader checks them), in a
    free-form `*_options` dict, for config groups (`+aligner@x=hard`) and `hydra.*`.
    """
    roots = config_roots(searchpath_roots(overrides))
    groups = {p.name for r in roots if r.is_dir() for p in r.iterdir() if p.is_dir()}
    # a sweep or protocol file's own node (`sweep.`, `protocol.`) is checked by its spec loader
    checked = (*CHECKED_NODES, *([config_name.split("/")[0]] if "/" in config_name else []))

    def allowed(key: str) -> bool:
        parts = key.split(".")
        return (
            key.startswith("hydra.") or "@" in key or key in groups
            or any(key.startswith(f"{node}.") for node in checked)
            or any(part.endswith("_options") for part in parts[:-1])
        )  # fmt: skip

    adds = [o for o in overrides if o.startswith("+") and not allowed(o.lstrip("+").partition("=")[0])]
    if not adds:
        return
    base = compose(config_name, [o for o in overrides if o not in adds])
    for text in adds:
        key = text.lstrip("+").partition("=")[0]
        if OmegaConf.select(base, key, default=_ABSENT) is not _ABSENT:
            continue  # `++key=v` on a key that exists only sets it
        import difflib

        keys = list(_dotted_keys(OmegaConf.to_container(base, resolve=False)))
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(
            f"{text!r} adds the key {key!r}, which config {config_name!r} does not have and nothing reads.{hint} "
            f"New keys go only into a component's options ({', '.join(CHECKED_NODES)}: checked by its "
            "dataclass) or a free-form *_options dict"
        )


_ABSENT = object()


#: Config groups that hold one registered component (`name:` + its options), so `GROUP.name=X`
#: means "the component X" (the group choice GROUP=X), never "X with another component's options".
NAMED_GROUPS = ("aligner", "loss")


def _names_as_group_choices(overrides: list[str]) -> tuple[list[str], dict[str, tuple[str, list[str]]]]:
    """`aligner.name=X` composes X's own config: the group choice `aligner=X` when X has a config
    file (finealign's or a plugin's), else X alone (`{name: X}`: its dataclass defaults; set
    apart in the second value, with the user's other `aligner.*` overrides, for
    `_with_bare_components`). Without this the default aligner's options would carry over to X.
    """
    kept, bare = list(overrides), {}
    for group in NAMED_GROUPS:
        names = [o for o in kept if o.lstrip("+").partition("=")[0] == f"{group}.name"]
        if not names:
            continue
        value = names[-1].partition("=")[2]
        choices = [o for o in kept if o.lstrip("+~").partition("=")[0] == group]
        if choices:
            raise ConfigError(
                f"{names[-1]!r} and {choices[-1]!r} both choose the {group}: give it once, as {group}={value}"
            )
        kept = [o for o in kept if o not in names]
        if value in group_options(group, searchpath_roots(overrides)):
            kept.append(f"{group}={value}")
            continue
        options = [o for o in kept if o.lstrip("+").startswith(f"{group}.")]
        kept = [o for o in kept if o not in options]
        bare[group] = (value, options)
    return kept, bare


def _with_bare_components(cfg: DictConfig, bare: dict[str, tuple[str, list[str]]]) -> DictConfig:
    """`cfg` with each group in `bare` replaced by `{name: X}` plus the user's own overrides of it."""
    if not bare:
        return cfg
    from finealign.overrides import apply

    for group, (name, options) in bare.items():
        with open_dict(cfg):
            cfg[group] = {"name": name}
        cfg = apply(cfg, [f"++{o.lstrip('+')}" for o in options])
    return cfg


def _not_overridable(exc: Exception) -> str | None:
    """The key in Hydra's "Could not override 'KEY'" (a key the config does not have)."""
    import re

    match = re.search(r"Could not override '([^']+)'", str(exc))
    return match.group(1) if match else None


def _into_free_form(overrides: list[str], key: str | None) -> list[str] | None:
    """Options dicts (`local_options`, `vision_options`, ...) are free-form: their keys are checked
    later by the named component's own dataclass, so `aligner.local_options.direction=both` may add
    a key there without Hydra's `+` (it becomes `++`). None when `key` is not inside one."""
    if key is None or not any(part.endswith("_options") for part in key.split(".")[:-1]):
        return None
    adjusted = [f"++{o}" if o.partition("=")[0] == key else o for o in overrides]
    return adjusted if adjusted != overrides else None


def _close_keys_hint(config_name: str, overrides: list[str], key: str | None) -> str:
    """ " Did you mean ...?" for an override of a key the config lacks, from the keys it has."""
    if key is None:
        return ""
    try:
        base = compose(config_name, [o for o in overrides if o.partition("=")[0] != key])
    except ConfigError:
        return ""
    keys = list(_dotted_keys(OmegaConf.to_container(base, resolve=False)))
    if key in keys:
        return ""  # the key exists: Hydra's own message says what is wrong with the override
    hint = did_you_mean(key, keys, cutoff=0.6)
    return f"\n{hint.lstrip()}" if hint else ""


def _dotted_keys(node: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{prefix}{k}"
            yield from _dotted_keys(v, f"{prefix}{k}.")


def method_presets() -> list[str]:
    """Names of the method presets (method/*.yaml in finealign's tree and every plugin's)."""
    return sorted(group_options("method"))


def check_method_overrides(overrides: Iterable[str]) -> None:
    """An unknown `method=NAME` is an UnknownNameError with close matches (before Hydra's own)."""
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key.lstrip("+~") == "method" and value not in ("", "null"):
            names = method_presets()
            if value not in names:
                hint = did_you_mean(value, names)
                raise UnknownNameError(f"unknown method preset {value!r}.{hint} Presets: {', '.join(names)}")


def check_group_choices(overrides: Iterable[str]) -> None:
    """`GROUP=NAME` for a config group (`aligner=meanmax`) names one of its options, in finealign's
    tree or a plugin's: else a ConfigError with the close matches, before Hydra's own message
    (which lists the search path, not the options). Keys with a dot, values Hydra would expand
    (lists, sweeps, `null`) and method presets (check_method_overrides) are left alone."""
    overrides = list(overrides)
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if not sep or key in ("method", "hydra") or "." in key or "/" in key or "/" in value:
            continue
        if value in ("", "null") or any(c in value for c in ",[]()${}"):
            continue
        options = group_options(key, searchpath_roots(overrides))
        if options and value not in options:
            raise ConfigError(
                f"{key}={value}: no {key} config {value!r}.{did_you_mean(value, options)} "
                f"Options: {', '.join(sorted(options))}"
            )


def check_method_fixed(cfg: DictConfig) -> str | None:
    """The preset's name, after checking that no override changed a key the preset fixes.

    A preset lists under `method.fixed` the keys that make it that method (aligner, pooling form,
    loss…); `method=chan aligner=mean_max` or `method=chan aligner.pooling=mean` contradict it.
    """
    method = cfg.get("method")
    if method is None:
        return None
    if not isinstance(method, DictConfig) or "name" not in method:
        raise ConfigError(f"method must be a preset (configs/method/NAME.yaml), got {method!r}")
    name = str(method.name)
    for key, expected in (method.get("fixed") or {}).items():
        actual = OmegaConf.select(cfg, key, default=None)
        if actual != expected:
            raise ConfigError(
                f"method={name} fixes {key}={expected!r}, but the config has {key}={actual!r}: an override "
                f"contradicts the preset (drop the override, or drop method={name} to compose freely)"
            )
    return name


# -- typed sections ---------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """The `train:` group: optimisation and the training loop."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-4  # heads, aligner and loss parameters (e.g. a learnable temperature)
    backbone_lr: float = 1e-5  # encoder backbones (ignored when frozen)
    freeze_backbone: bool = False
    # Fine-tuning controls (parameter groups: backbone, heads, aligner, temperature = the loss's own)
    aligner_lr: Any = None  # null: lr
    temperature_lr: Any = None  # null: lr (e.g. InfoNCE's learnable logit scale)
    backbone_weight_decay: Any = None  # null: weight_decay
    unfreeze_backbone_epoch: int = 0  # >0: backbones frozen for this many epochs, then trained at backbone_lr
    layer_decay: float = 1.0  # <1: layer-wise lr decay, lr × decay^(depth from the top) per backbone block
    grad_checkpointing: bool = False  # recompute backbone activations in backward (timm, transformers, open_clip)
    weight_decay: float = 1e-4
    warmup_steps: int = 0  # linear warm-up, in optimiser steps
    warmup_fraction: float = 0.0  # or as a fraction of all optimiser steps (DRL: 0.1); one of the two is 0
    schedule: str = "cosine"  # cosine | step | constant (after warm-up)
    step_epochs: int = 10  # step schedule: multiply the lr by step_gamma every step_epochs epochs
    step_gamma: float = 0.1
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of the peak lr
    grad_clip: float = 2.0  # max global grad norm; 0 disables clipping
    accumulate: int = 1  # optimiser step every `accumulate` batches
    amp: str = "none"  # none | bf16 | fp16 (fp16 uses a GradScaler, CUDA only)
    pairs: str = "captions"  # captions: every caption once per epoch; images: each image once
    num_workers: int = 0
    eval_every: int = 1  # validate every N epochs (0: never)
    val_max_items: int = 0  # cap the validation gallery (0: all items) to keep validation cheap
    select: str = "best"  # best (by validation rsum) | last: which weights are tested
    checkpoint: bool = True  # write output_dir/checkpoints/last.pt every epoch
    resume: Any = None  # null | "auto" (output_dir/checkpoints/last.pt if present) | a path
    max_steps: int = 0  # stop after this many optimiser steps (0: no limit); for smoke tests
    log_every: int = 50
    progress: bool = True  # tqdm bars (shown only on a TTY; FINEALIGN_PROGRESS=0/1 overrides everywhere)
    tensorboard: bool = True  # per-epoch scalars in <output_dir>/tb when the tensorboard package is installed
    mlflow: bool = False  # also log params (the resolved config), per-epoch scalars and test metrics to MLflow
    mlflow_tracking_uri: Any = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db (one store per project)
    mlflow_experiment: str = "finealign"
    save_model: bool = True  # write output_dir/model.pt (weights + config) for `finealign eval`
    # Under torchrun (WORLD_SIZE > 1) "auto" trains one model with DDP over the global batch
    # (batch_size is the global batch); "off" ignores torchrun's environment.
    distributed: str = "auto"
    dist_timeout_s: float = 1800.0  # a collective waiting longer (a rank died or hangs) stops every rank

    def warmup_for(self, total_steps: int) -> int:
        """Warm-up steps of a run with `total_steps` optimiser steps: warmup_steps, or
        warmup_fraction of the total (DRL's --warmup_proportion)."""
        return self.warmup_steps or round(self.warmup_fraction * total_steps)

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "accumulate", "step_epochs", "log_every"):
            check_positive_int(key, getattr(self, key))
        for key in (
            "warmup_steps",
            "num_workers",
            "eval_every",
            "val_max_items",
            "max_steps",
            "unfreeze_backbone_epoch",
        ):
            check_int(key, getattr(self, key), low=0)
        check_number("lr", self.lr, low=0, strict=True)
        for key in ("backbone_lr", "weight_decay", "grad_clip"):
            check_number(key, getattr(self, key), low=0)
        for key in ("aligner_lr", "temperature_lr", "backbone_weight_decay"):
            check_number(key, getattr(self, key), low=0, optional=True)
        check_number("layer_decay", self.layer_decay, low=0, strict=True, high=1)
        check_number("warmup_fraction", self.warmup_fraction, low=0, high=1, high_strict=True)
        check_number("step_gamma", self.step_gamma, low=0, strict=True, high=1)
        check_number("min_lr_ratio", self.min_lr_ratio, low=0, high=1)
        check_number("dist_timeout_s", self.dist_timeout_s, low=0, strict=True)
        for key in ("freeze_backbone", "grad_checkpointing", "checkpoint", "progress", "tensorboard", "mlflow",
                    "save_model"):  # fmt: skip
            check_bool(key, getattr(self, key))
        if self.freeze_backbone and self.unfreeze_backbone_epoch:
            raise ConfigError(
                f"unfreeze_backbone_epoch must be 0 when freeze_backbone is true (a frozen backbone is never "
                f"unfrozen), got {self.unfreeze_backbone_epoch!r}"
            )
        if self.warmup_fraction and self.warmup_steps:
            raise ConfigError(
                f"warmup_fraction must be 0 when warmup_steps is set ({self.warmup_steps}): give the warm-up "
                f"one way, got {self.warmup_fraction!r}"
            )
        check_choice("schedule", self.schedule, ("cosine", "step", "constant"))
        check_choice("amp", self.amp, ("none", "bf16", "fp16"))
        check_choice("pairs", self.pairs, ("captions", "images"))
        check_choice("select", self.select, ("best", "last"))
        check_choice("distributed", self.distributed, ("auto", "off"))
        check_text("resume", self.resume, optional=True, what="'auto' or a path")
        check_text("mlflow_tracking_uri", self.mlflow_tracking_uri, optional=True,
                   what="a tracking URI (http://..., sqlite:///..., databricks)")  # fmt: skip
        check_text("mlflow_experiment", self.mlflow_experiment, what="a non-empty experiment name")


@dataclass
class EvalConfig:
    """The `eval:` section: which split is tested and how the gallery is scored."""

    split: str = "test"
    batch_size: int = 256  # items per encoder batch when encoding the gallery
    chunk_items: int = 256  # images per aligner call when scoring (bounds memory)
    coco_folds: int = 0  # >0: also report the average over this many folds of fold_size images
    fold_size: int = 1000
    max_items: int = 0  # evaluate on the first N items only (0: all)
    progress: bool = True
    # Scoring cost with spread (profiling.scoring_cost): 0 = off, else >= 5 interleaved repeats of
    # preparing the caption gallery, scoring one image query and a batch of `cost_rows` image
    # queries against it, beside two references.
    cost_repeats: int = 0
    cost_rows: int = COST_BATCH
    threads: int = 0  # torch intra-op threads while evaluating (0: leave torch's setting)
    save_ranks: bool = True  # write ranks.npz (every query's rank) beside results.json: paired bootstraps

    def __post_init__(self) -> None:
        for key in ("batch_size", "chunk_items", "fold_size", "cost_rows"):
            check_positive_int(key, getattr(self, key))
        for key in ("coco_folds", "max_items", "threads"):
            check_int(key, getattr(self, key), low=0)
        if self.cost_repeats != 0:
            check_int("cost_repeats", self.cost_repeats, low=5, note=" or 0 (off): a median and an IQR need them")
        for key in ("progress", "save_ranks"):
            check_bool(key, getattr(self, key))


# -- validation -------------------------------------------------------------------------------


@dataclass
class ExperimentSpec:
    """A validated experiment: every component's name and checked options."""

    vision: tuple[str, dict[str, Any]]
    text: tuple[str, dict[str, Any]]
    embed_dim: int
    aligner: tuple[str, dict[str, Any]]
    loss: tuple[str, dict[str, Any]]
    data: tuple[str, dict[str, Any]]
    train: TrainConfig
    eval: EvalConfig
    seed: int
    device: str
    output_dir: str
    method: str | None = None  # the method preset the config was composed from, if any
    allow_shared_images: bool = False  # splits may share images (finealign.data.sanity logs instead of refusing)


REQUIRED_KEYS = ("encoder", "aligner", "loss", "data", "train", "seed", "output_dir", "device")


def validate(cfg: DictConfig) -> ExperimentSpec:
    """Check the whole composed config; raise ConfigError naming the first bad key.

    Every component's options are validated against its own Config dataclass, so this catches
    unknown names, unknown options and out-of-range values without building any model.
    """
    from finealign.registry import build_config, config_class, ensure_builtins, registry

    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ConfigError(f"config is missing the key(s) {missing}")
    method = check_method_fixed(cfg)

    def component(kind: str, key: str, node: Any, inject: dict[str, Any] | None = None) -> tuple[str, dict]:
        options = _container(node, key)
        if "name" not in options:
            raise ConfigError(f"{key}.name is missing: say which {kind[:-1]} to use")
        name = options.pop("name")
        ensure_builtins(kind)
        try:
            target = registry(kind).get(name)
        except UnknownNameError as exc:
            raise ConfigError(f"{key}.name: {exc}") from exc
        cfg_cls = config_class(target)
        if cfg_cls is not None:
            fields = {f.name for f in dataclasses.fields(cfg_cls)}
            for k, v in (inject or {}).items():
                if k in fields and options.get(k) is None:
                    options[k] = v
            try:
                build_config(cfg_cls, options, f"{kind[:-1]} {name!r}")
            except ConfigError as exc:
                raise ConfigError(f"{key}: {exc}") from exc
        return name, options

    encoder = _container(cfg.encoder, "encoder")
    embed_dim: Any = encoder.get("embed_dim")  # config input: an int once checked on the next line
    check_positive_int("encoder.embed_dim", embed_dim)
    for side in ("vision", "text"):
        if side not in encoder:
            raise ConfigError(f"encoder.{side} is missing (name + options of the {side} encoder)")
    shared = {"embed_dim": embed_dim}
    vision = component("encoders", "encoder.vision", cfg.encoder.vision, shared)
    text = component("encoders", "encoder.text", cfg.encoder.text, shared)
    aligner = component("aligners", "aligner", cfg.aligner)
    loss = component("losses", "loss", cfg.loss)
    data = component("datasets", "data", cfg.data)
    train = _typed(TrainConfig, cfg.train, "train")
    evaluation = _typed(EvalConfig, cfg.get("eval", {}), "eval")
    if not is_int(cfg.seed):
        raise ConfigError(f"seed must be an int, got {cfg.seed!r}")
    shared = cfg.get("allow_shared_images", False)  # a config saved before the key existed: the default
    check_bool("allow_shared_images", shared)
    return ExperimentSpec(
        vision=vision,
        text=text,
        embed_dim=embed_dim,
        aligner=aligner,
        loss=loss,
        data=data,
        train=train,
        eval=evaluation,
        seed=int(cfg.seed),
        device=str(cfg.device),
        output_dir=str(cfg.output_dir),
        method=method,
        allow_shared_images=shared,
    )


def _container(node: Any, key: str) -> dict[str, Any]:
    if node is None:
        return {}
    if not isinstance(node, (DictConfig, dict)):
        raise ConfigError(f"{key} must be a mapping, got {node!r}")
    try:
        # cast: to_container of a DictConfig is a dict (its stub's return type covers every node kind)
        data = (
            cast("dict[str, Any]", OmegaConf.to_container(node, resolve=True))
            if isinstance(node, DictConfig)
            else dict(node)
        )
    except Exception as exc:  # interpolation errors name the key themselves
        raise ConfigError(f"{key}: {exc}") from exc
    return dict(data)


def _typed(cls: type, node: Any, key: str) -> Any:
    from finealign.registry import build_config

    try:
        return build_config(cls, _container(node, key), key)
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(key) else f"{key}.{message}") from exc
