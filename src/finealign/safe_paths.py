"""The one rule for a file name read from metadata (a gallery's manifest, a cache entry's
meta.json, a dataset's annotation file): it names a file *inside* its own folder. An absolute
path, a `..` part, a drive letter or a symlink that leads out of the folder would let a data file
make finealign read (or verify, or train on) any file on the machine."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from finealign.errors import DataError


def escapes(name: Any) -> bool:
    """True unless `name` is a non-empty relative path with no `..` part (by its text alone)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        return True
    pure = PurePosixPath(name.replace("\\", "/"))
    return pure.is_absolute() or ".." in pure.parts or bool(PureWindowsPath(name).drive)


def confined(folder: str | Path, name: Any, what: str, *, follow_links: bool = True) -> Path:
    """`folder / name`, or DataError naming `what` when `name` leaves `folder` — by its text
    (absolute, `..`) or, with `follow_links`, through a symlink that resolves outside it."""
    if escapes(name):
        raise DataError(
            f"{what} names {name!r}: a file name read from metadata must be a relative path inside {folder}"
        )
    path = Path(folder) / name
    if follow_links:
        root = Path(folder).resolve()
        if not path.resolve().is_relative_to(root):
            raise DataError(f"{what} names {name!r}, which resolves to {path.resolve()}: outside {root}")
    return path
