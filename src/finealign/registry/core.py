"""A small generic registry: one instance per component kind (aligners, losses, encoders, datasets).

Modelled on timm (`register_model`, `list_models('vit_*')`, `create_model(name, **kw)`) and on
fsspec's lazy entry points: third-party plugins are listed from Python entry points without being
imported, and imported on first use, with an error that says what to install when that fails.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from finealign.checks import check_bool, close_matches, did_you_mean
from finealign.errors import ConfigError, PluginError, UnknownNameError


@dataclass
class Entry:
    """One registered component, imported already or still a lazy `module:attr` reference."""

    name: str
    target: Any = None  # the class / factory once imported
    ref: str | None = None  # "module:attr" for a not-yet-imported plugin
    distribution: str | None = None  # the plugin's distribution, for error messages
    description: str = ""
    source: str = "builtin"  # "builtin" or "plugin:<distribution>"
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def loaded(self) -> bool:
        return self.target is not None


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0].strip() if (doc or "").strip() else ""


def config_class(target: Any) -> type | None:
    """The dataclass a component validates its keyword arguments against (its `Config`)."""
    cfg = getattr(target, "Config", None)
    return cfg if isinstance(cfg, type) and dataclasses.is_dataclass(cfg) else None


def build_config(cfg_cls: type, kwargs: dict[str, Any], what: str) -> Any:
    """Instantiate `cfg_cls(**kwargs)`, turning unknown keys and bad values into ConfigError."""
    names = [f.name for f in dataclasses.fields(cfg_cls)]
    for key in kwargs:
        if key not in names:
            close = close_matches(key, names)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"{what} has no option {key!r}{hint} (options: {', '.join(names)})")
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    for key, value in kwargs.items():
        declared = str(fields[key].type)
        if declared == "bool":
            # "no"/"false" are truthy strings: accepting them would silently mean True
            check_bool(f"{what}: {key}", value)
        if isinstance(value, float) and not math.isfinite(value):
            default = fields[key].default
            if not (isinstance(default, float) and math.isinf(default)):
                raise ConfigError(f"{what}: {key} must be a finite number, got {value!r}")
    try:
        return cfg_cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: {exc}") from exc


class Registry:
    """Name → component for one kind. Components are classes (or factories).

    A class with a dataclass attribute `Config` is built as `cls(Config(**kwargs))`, so every
    keyword is checked against the component's own dataclass (unknown keys and bad values raise
    ConfigError); anything else is called as `target(**kwargs)`.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.group = entry_point_group or f"finealign.{kind}"
        self._entries: dict[str, Entry] = {}
        self._plugins_scanned = False

    @property
    def singular(self) -> str:
        """'aligners' → 'aligner', 'losses' → 'loss': for messages."""
        if self.kind.endswith("sses"):
            return self.kind[:-2]
        return self.kind[:-1] if self.kind.endswith("s") else self.kind

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        tags: tuple[str, ...] = (),
        override: bool = False,
    ) -> Callable[[Any], Any]:
        """Decorator: `@ALIGNERS.register("hard")` registers the class under that name."""

        def decorator(target: Any) -> Any:
            key = name or getattr(target, "__name__", None)
            if not key:
                raise ConfigError(f"cannot infer a {self.kind} name for {target!r}; pass one")
            self.add(key, target, description=description, tags=tags, override=override)
            return target

        return decorator

    def add(
        self,
        name: str,
        target: Any,
        *,
        description: str | None = None,
        tags: tuple[str, ...] = (),
        override: bool = False,
        source: str = "builtin",
    ) -> None:
        existing = self._entries.get(name)
        if existing is not None and not override and existing.target is not target:
            where = existing.ref or getattr(existing.target, "__module__", "?")
            raise ConfigError(
                f"{self.kind} {name!r} is already registered (by {where}); pass override=True to replace it"
            )
        self._entries[name] = Entry(
            name=name,
            target=target,
            description=description or _first_line(getattr(target, "__doc__", None)),
            source=source,
            tags=tuple(tags),
        )

    # -- plugins ------------------------------------------------------------------------------
    def scan_plugins(self, force: bool = False) -> None:
        """Record every entry point of this kind's group as a lazy entry (nothing is imported)."""
        if self._plugins_scanned and not force:
            return
        self._plugins_scanned = True
        for ep in metadata.entry_points(group=self.group):
            if ep.name in self._entries and self._entries[ep.name].source == "builtin":
                # A plugin may not silently shadow a built-in; it stays reachable by its full name.
                key = f"{ep.dist.name if ep.dist else 'plugin'}:{ep.name}"
            else:
                key = ep.name
            if key in self._entries and self._entries[key].loaded:
                continue
            dist = ep.dist.name if ep.dist else None
            self._entries[key] = Entry(
                name=key,
                ref=ep.value,
                distribution=dist,
                source=f"plugin:{dist or '?'}",
            )

    def _load(self, entry: Entry) -> Any:
        if entry.target is not None:
            return entry.target
        module_name, _, attr = (entry.ref or "").partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in attr.split(".") if attr else []:
                obj = getattr(obj, part)
        except Exception as exc:  # any import-time failure of third-party code
            pkg = entry.distribution or module_name.split(".")[0]
            raise PluginError(
                f"{self.kind} plugin {entry.name!r} ({entry.ref}) failed to load: {exc!r}. "
                f"Install or repair the package that provides it: pip install {pkg}"
            ) from exc
        entry.target = obj
        if not entry.description:
            entry.description = _first_line(getattr(obj, "__doc__", None))
        return obj

    # -- lookup -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self.scan_plugins()
        return sorted(self._entries)

    def list(self, pattern: str | None = None) -> list[str]:
        """Registered names, optionally filtered by a glob (`'mean_*'`), sorted."""
        names = self.names()
        if pattern is None:
            return names
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]

    def entry(self, name: str) -> Entry:
        if not isinstance(name, str) or not name:
            raise UnknownNameError(
                f"{self.singular} name must be a non-empty string, got {name!r}. "
                f"Registered: {', '.join(sorted(self._entries)) or '(none)'}"
            )
        self.scan_plugins()
        if name not in self._entries:
            hint = did_you_mean(name, self._entries)
            raise UnknownNameError(
                f"unknown {self.singular} {name!r}.{hint} Registered: {', '.join(sorted(self._entries)) or '(none)'}"
            )
        return self._entries[name]

    def get(self, name: str) -> Any:
        """The registered class/factory (imports a plugin on first use)."""
        return self._load(self.entry(name))

    def describe(self, name: str) -> str:
        entry = self.entry(name)
        if not entry.description:
            self._load(entry)
        return entry.description

    def build(self, name: str, **kwargs: Any) -> Any:
        """Build a component by name; keyword arguments are validated against its Config."""
        target = self.get(name)
        cfg_cls = config_class(target)
        if cfg_cls is None:
            return target(**kwargs)
        return target(build_config(cfg_cls, kwargs, f"{self.singular} {name!r}"))

    def __contains__(self, name: object) -> bool:
        self.scan_plugins()
        return name in self._entries

    def __iter__(self):
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"
