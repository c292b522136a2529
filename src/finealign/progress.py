"""One switch for every progress bar, and bars only where a person watches.

tqdm bars redraw with carriage returns and cursor escapes: on a terminal that is a bar, in a log
file or CI output it is thousands of lines of `\\r` and `[A`. So a bar shows only when the caller
asks for it, stderr is a TTY, and `FINEALIGN_PROGRESS` is not "0" ("1" forces bars on).
"""

from __future__ import annotations

import os
import sys
from typing import Any

ENV = "FINEALIGN_PROGRESS"


def show_progress(requested: bool = True) -> bool:
    forced = os.environ.get(ENV)
    if forced == "0":
        return False
    if forced == "1":
        return bool(requested)
    return bool(requested) and sys.stderr.isatty()


def bar(iterable: Any = None, *, progress: bool = True, **kwargs: Any) -> Any:
    """`tqdm(iterable, **kwargs)`, disabled unless `show_progress(progress)`."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not show_progress(progress), **kwargs)
