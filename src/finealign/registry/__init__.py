"""One registry per component kind, plus `build`/`list_*` helpers in timm's style.

Built-in components register when their package is imported; `ensure_builtins()` imports them
(lazily, so `import finealign.registry` stays cheap). Plugins come from entry points in the groups
`finealign.aligners`, `finealign.losses`, `finealign.encoders`, `finealign.datasets`.
"""

from __future__ import annotations

import importlib
from typing import Any

from finealign.registry.core import Entry, Registry, build_config, config_class

ALIGNERS = Registry("aligners")
LOSSES = Registry("losses")
ENCODERS = Registry("encoders")
DATASETS = Registry("datasets")

REGISTRIES: dict[str, Registry] = {
    "aligners": ALIGNERS,
    "losses": LOSSES,
    "encoders": ENCODERS,
    "datasets": DATASETS,
}

# The package whose import registers each kind's built-ins.
_BUILTIN_PACKAGES = {
    "aligners": "finealign.aligners",
    "losses": "finealign.losses",
    "encoders": "finealign.encoders",
    "datasets": "finealign.data",
}


def ensure_builtins(kind: str | None = None) -> None:
    """Import the built-in components of one kind (or all kinds) so that they are registered."""
    kinds = [kind] if kind else list(_BUILTIN_PACKAGES)
    for k in kinds:
        importlib.import_module(_BUILTIN_PACKAGES[registry(k).kind])


def registry(kind: str) -> Registry:
    if kind not in REGISTRIES:
        from finealign.checks import did_you_mean
        from finealign.errors import UnknownNameError

        hint = did_you_mean(kind, REGISTRIES, n=2, cutoff=0.6)
        raise UnknownNameError(f"unknown component kind {kind!r}.{hint} Kinds: {', '.join(REGISTRIES)}")
    return REGISTRIES[kind]


def build(kind: str, name: str, **kwargs: Any) -> Any:
    ensure_builtins(kind)
    return registry(kind).build(name, **kwargs)


def create_aligner(name: str, **kwargs: Any) -> Any:
    return build("aligners", name, **kwargs)


def create_loss(name: str, **kwargs: Any) -> Any:
    return build("losses", name, **kwargs)


def create_encoder(name: str, **kwargs: Any) -> Any:
    return build("encoders", name, **kwargs)


def create_dataset(name: str, **kwargs: Any) -> Any:
    return build("datasets", name, **kwargs)


def list_aligners(pattern: str | None = None) -> list[str]:
    ensure_builtins("aligners")
    return ALIGNERS.list(pattern)


def list_losses(pattern: str | None = None) -> list[str]:
    ensure_builtins("losses")
    return LOSSES.list(pattern)


def list_encoders(pattern: str | None = None) -> list[str]:
    ensure_builtins("encoders")
    return ENCODERS.list(pattern)


def list_datasets(pattern: str | None = None) -> list[str]:
    ensure_builtins("datasets")
    return DATASETS.list(pattern)


__all__ = [
    "ALIGNERS",
    "DATASETS",
    "ENCODERS",
    "Entry",
    "LOSSES",
    "REGISTRIES",
    "Registry",
    "build",
    "build_config",
    "config_class",
    "create_aligner",
    "create_dataset",
    "create_encoder",
    "create_loss",
    "ensure_builtins",
    "list_aligners",
    "list_datasets",
    "list_encoders",
    "list_losses",
    "registry",
]
