"""The config tree of a long run (a protocol, a sweep), frozen when it starts: every run of it —
trials and final runs, in any worker, after any number of resumes — composes its config from
`OUT/config-snapshot/` (a copy of the tree `finealign.config.config_dir()` names), never from the
YAML on disk, so editing `configs/` while it runs changes nothing in it.

Resuming when the tree on disk differs from the snapshot is refused with the files that differ,
unless the caller adopts the changes (`--adopt-config-changes`): then the tree becomes the
snapshot (the old one is kept as `config-snapshot.replaced-<UTC time>`), and the runs still to do
use it. Workers that start together race to create the snapshot: one wins (a rename), the others
compare against it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from finealign.config import CONFIG_DIR_ENV, config_dir
from finealign.errors import ConfigError

SNAPSHOT_DIR = "config-snapshot"
#: what runs never compose from: protocol and sweep files (their specs are held and checked by
#: protocol.json and the sweep's study), caches
LEFT_OUT = ("protocol", "sweep", "__pycache__")


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file under `root` that runs compose from (not LEFT_OUT)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not set(path.relative_to(root).parts) & set(LEFT_OUT):
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def tree_differences(stored: dict[str, str], now: dict[str, str]) -> list[str]:
    """What changed from `stored` to `now`, one line per file: `changed X`, `added X`, `removed X`."""
    lines = [f"changed {p}" for p in sorted(stored.keys() & now.keys()) if stored[p] != now[p]]
    lines += [f"added {p}" for p in sorted(now.keys() - stored.keys())]
    lines += [f"removed {p}" for p in sorted(stored.keys() - now.keys())]
    return lines


def _copy_tree(source: Path, out: Path) -> Path:
    """A full copy of `source` beside `out`'s snapshot, under a name of this process."""
    tmp = out / f".{SNAPSHOT_DIR}.{os.getpid()}.{time.time_ns()}"
    shutil.copytree(source, tmp, ignore=lambda folder, names: [n for n in names if n in LEFT_OUT])
    return tmp


def freeze_config_tree(out: Path, *, adopt_changes: bool = False, log=print, what: str = "this protocol") -> Path:
    """The run's snapshot of the config tree (made now if it has none); ConfigError when the
    tree on disk differs from it, unless `adopt_changes`."""
    out.mkdir(parents=True, exist_ok=True)
    source = config_dir()
    snapshot = out / SNAPSHOT_DIR
    if source.resolve() == snapshot.resolve():
        return snapshot  # already composing from it (a nested call)
    if not snapshot.is_dir():
        tmp = _copy_tree(source, out)
        try:
            os.rename(tmp, snapshot)
            return snapshot
        except OSError:  # another worker made it first: compare against theirs
            shutil.rmtree(tmp, ignore_errors=True)
    differ = tree_differences(tree_digest(snapshot), tree_digest(source))
    if not differ:
        return snapshot
    if not adopt_changes:
        shown = "; ".join(differ[:8]) + (f"; and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise ConfigError(
            f"the config tree {source} changed since {what} started ({shown}); its runs compose from "
            f"the snapshot {snapshot}. Undo the edits, or resume with --adopt-config-changes to use the tree "
            "as it is now for the runs still to do (finished runs keep what they used)"
        )
    tmp = _copy_tree(source, out)
    kept = out / f"{SNAPSHOT_DIR}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
    os.rename(snapshot, kept)
    os.rename(tmp, snapshot)
    log(f"adopted config changes ({'; '.join(differ)}); the previous snapshot is {kept}")
    return snapshot


@contextlib.contextmanager
def composing_from(snapshot: Path) -> Iterator[None]:
    """Every config composed in this block (this process) comes from `snapshot`."""
    before = os.environ.get(CONFIG_DIR_ENV)
    os.environ[CONFIG_DIR_ENV] = str(snapshot.resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CONFIG_DIR_ENV, None)
        else:
            os.environ[CONFIG_DIR_ENV] = before
