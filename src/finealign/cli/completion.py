"""Shell completion for `finealign` (bash; zsh through bashcompinit), Hydra style:

    eval "$(finealign --shell-completion install=bash)"     # or: finealign -sc install=bash

completes subcommands, flags, config keys (`train.`, `eval.lr`…) and group choices (`aligner=me` →
`aligner=mean_max`) from the same config tree (and plugin config folders) the commands compose.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

SCRIPT = """\
# finealign bash completion (zsh: autoload -U bashcompinit && bashcompinit first)
_finealign_complete() {
    local IFS=$'\\n'
    COMPREPLY=( $(finealign __complete "${COMP_WORDS[@]:1:$COMP_CWORD}" 2>/dev/null) )
    # keys end in '.' or '=': let the user keep typing instead of adding a space
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[.=] ]]; then compopt -o nospace 2>/dev/null; fi
}
complete -F _finealign_complete finealign
"""

# the Hydra config each KEY=VALUE command composes
PRIMARY = {"train": "config", "eval": "config", "sweep": "config", "explain": "config", "profile": "profile",
           "cache": "cache"}  # fmt: skip


def install_script(shell: str) -> str:
    from finealign.errors import ConfigError

    if shell not in ("bash", "zsh"):
        raise ConfigError(f"shell completion is for bash and zsh (through bashcompinit), not {shell!r}")
    return SCRIPT


def candidates(words: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Completions of the last word, given the words typed after `finealign`."""
    if not words:
        words = [""]
    *before, partial = words
    subparsers = _subparsers(parser)
    if not before:
        return sorted(n for n in [*subparsers, "--help", "--version", "--shell-completion"] if n.startswith(partial))
    command = before[0]
    if command not in subparsers:
        return []
    if partial.startswith("-"):
        flags = [s for a in subparsers[command]._actions for s in a.option_strings]
        return sorted(f for f in flags if f.startswith(partial))
    if command not in PRIMARY:
        return []
    return _config_candidates(PRIMARY[command], partial)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _config_candidates(config_name: str, partial: str) -> list[str]:
    from finealign.config import config_groups

    prefix = ""
    for mark in ("++", "+", "~"):
        if partial.startswith(mark):
            prefix, partial = mark, partial[len(mark) :]
            break
    groups = config_groups()
    key, sep, value = partial.partition("=")
    if sep:
        if key in groups and config_name == "config":
            return [f"{prefix}{key}={o}" for o in sorted(groups[key]) if o.startswith(value)]
        return []
    cfg = _composed(config_name)
    if cfg is None:  # a broken config tree: complete nothing rather than print a traceback
        return []
    keys = set(_keys_at_level(cfg, key))
    if config_name == "config":
        keys |= {f"{g}=" for g in groups if g.startswith(key) and "." not in key}
    return sorted(f"{prefix}{k}" for k in keys if k.startswith(key))


def _composed(config_name: str) -> Any:
    """The composed config as plain data, from a per-user cache keyed by every config file's path,
    size and mtime (a TAB must answer in well under a second; composing with Hydra takes most of
    one): recomposed only after a config file changes. None when the tree does not compose."""
    import hashlib
    import json
    import os
    from pathlib import Path

    from finealign import __version__
    from finealign.config import config_roots

    try:
        files = sorted(p for root in config_roots() for p in root.rglob("*.yaml"))
        stamp = "\n".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    except Exception:
        return None
    digest = hashlib.sha1(f"{__version__}\n{config_name}\n{stamp}".encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finealign" / "completion"
    path = base / f"{config_name}-{digest}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    try:
        from omegaconf import OmegaConf

        from finealign.config import compose

        extra = []
        if config_name == "profile":
            from finealign.cli.profile_cmd import aligner_node_overrides

            extra = aligner_node_overrides()[0]
        cfg = OmegaConf.to_container(compose(config_name, extra), resolve=False)
    except Exception:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f"{config_name}-*.json"):
            old.unlink()
        path.write_text(json.dumps(cfg, default=str))
    except OSError:
        pass  # a read-only home: complete without the cache
    return cfg


def _keys_at_level(cfg: Any, typed: str) -> Iterable[str]:
    """`tr` → `train.` (a section) / `seed=` (a value); `train.l` → `train.lr=`, `train.log_every=`."""
    path = typed.split(".")[:-1]
    node = cfg
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return
        node = node[part]
    if not isinstance(node, dict):
        return
    base = "".join(f"{p}." for p in path)
    for k, v in node.items():
        yield f"{base}{k}." if isinstance(v, dict) and v else f"{base}{k}="
