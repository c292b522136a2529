"""Where datasets live by default.

Order: `$FINEALIGN_DATA_ROOT/<name>` only, when that variable is set (a folder that does not exist
is an error); otherwise `<repo>/../shared/data/<name>` (the layout next to an
editable install of this repository), then `./data/<name>`.
"""

from __future__ import annotations

import os
from pathlib import Path

from finealign.errors import DataError

ENV_DATA_ROOT = "FINEALIGN_DATA_ROOT"
# src/finealign/data/paths.py → the repository root, for an editable install.
REPO_ROOT = Path(__file__).resolve().parents[3]


def candidate_roots(name: str) -> list[Path]:
    """Where a dataset is looked for. A set FINEALIGN_DATA_ROOT is the only place: a typo there must
    not silently fall back to another copy (and, say, start an hour-long run on other data)."""
    if os.environ.get(ENV_DATA_ROOT):
        root = Path(os.environ[ENV_DATA_ROOT]).expanduser()
        if not root.is_dir():
            raise DataError(f"{ENV_DATA_ROOT}={os.environ[ENV_DATA_ROOT]!r} is not a folder; fix it or unset it")
        return [root / name]
    roots = [REPO_ROOT.parent / "shared" / "data" / name]
    roots.append(Path.cwd() / "data" / name)
    return roots


def default_root(name: str) -> Path | None:
    """The first candidate folder that exists, or None."""
    for root in candidate_roots(name):
        if root.is_dir():
            return root
    return None
