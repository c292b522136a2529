"""Where datasets live by default.

Order: `$FINEALIGN_DATA_ROOT/<name>`, then `<repo>/../shared/data/<name>` (the layout next to an
editable install of this repository), then `./data/<name>`.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA_ROOT = "FINEALIGN_DATA_ROOT"
# src/finealign/data/paths.py → the repository root, for an editable install.
REPO_ROOT = Path(__file__).resolve().parents[3]


def candidate_roots(name: str) -> list[Path]:
    roots = []
    if os.environ.get(ENV_DATA_ROOT):
        roots.append(Path(os.environ[ENV_DATA_ROOT]).expanduser() / name)
    roots.append(REPO_ROOT.parent / "shared" / "data" / name)
    roots.append(Path.cwd() / "data" / name)
    return roots


def default_root(name: str) -> Path | None:
    """The first candidate folder that exists, or None."""
    for root in candidate_roots(name):
        if root.is_dir():
            return root
    return None
