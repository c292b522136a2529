"""Whether a feature cache entry still holds the features of the image files it names.

The entry's key hashes the annotation file and the encoders, not the images: an image file replaced
under the same name would reuse stale features. So meta.json records each item file's size,
mtime and a SHA-256 prefix of its bytes ("item_files", beside "items"), and reusing an entry
compares them: a file whose size or mtime changed is hashed again, and a changed content makes the
entry stale (the caller rebuilds it). A fresh copy of the same bytes (new mtimes after a re-sync)
only refreshes the recorded stats. Keys are unchanged, so entries built before this record are
adopted: their record is written on first reuse, from the files as they are then.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finealign.formats.feature_cache import META_FILE, file_sha256

log = logging.getLogger(__name__)
RECORD = "item_files"
SHA_CHARS = 16  # a 64-bit prefix: enough to tell a replaced file, short enough for 100k items in meta.json


def _stat(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if os.path.isfile(path) else None


def file_record(path: str | Path) -> list[Any] | None:
    """[size, mtime_ns, sha256 prefix] of an item file, or None when the item is no readable file."""
    stat = _stat(path)
    if stat is None:
        return None
    return [stat[0], stat[1], file_sha256(path)[:SHA_CHARS]]


def item_records(items: Sequence[Any]) -> list[list[Any] | None]:
    """The record of every item (None for items that are not files: feature rows, frame lists)."""
    return [file_record(item) if isinstance(item, (str, Path)) else None for item in items]


def changed_items(meta: dict[str, Any], items: Sequence[Any]) -> tuple[list[str], list[list[Any] | None] | None]:
    """(names of item files whose content differs from the record, the refreshed record or None
    when nothing needs rewriting). An entry without a record gets one (adopted)."""
    recorded = meta.get(RECORD)
    names = [str(x) for x in items]
    if not isinstance(recorded, list) or len(recorded) != len(names) or meta.get("items") != names:
        return [], item_records(items)  # adopt: record the files as they are now
    changed, refreshed, dirty = [], list(recorded), False
    for i, (name, record) in enumerate(zip(names, recorded, strict=True)):
        if record is None:
            continue
        stat = _stat(name)
        if stat is not None and [stat[0], stat[1]] == list(record[:2]):
            continue
        now = file_record(name) if stat is not None else None
        if now is None or now[0] != record[0] or now[2] != record[2]:
            changed.append(name)
        else:  # same bytes, new mtime (a re-synced copy): remember the new stat
            refreshed[i], dirty = now, True
    return changed, (refreshed if dirty and not changed else None)


def write_record(entry: Path, meta: dict[str, Any], record: list[list[Any] | None]) -> None:
    """Rewrite meta.json with `record` (atomically); a read-only cache keeps its old meta.json."""
    tmp = Path(entry) / f".{META_FILE}.{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({**meta, RECORD: record}, f, indent=1, default=str)
        os.replace(tmp, Path(entry) / META_FILE)
    except OSError as exc:
        log.info("could not record the item files of %s (%s): checked again next time", entry, exc)
        tmp.unlink(missing_ok=True)
