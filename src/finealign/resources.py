"""What the machine has, checked before work that needs it: memory for an estimate made from the
shapes (evaluation, training batches, profiles) and disk space for a writer (a feature cache, a
gallery). An estimate that does not fit is a ResourceError with the numbers, before anything is
allocated; a full disk is a DiskFullError, never a SIGBUS from a memory map or a half entry.

Estimates are lower bounds (the tensors the work cannot do without), so a refusal is certain to
be right; work that passes may still need more. FINEALIGN_MEMORY_BYTES overrides the memory
available (a scheduler's allowance, or a test).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from finealign.errors import DiskFullError, ResourceError

ENV_MEMORY = "FINEALIGN_MEMORY_BYTES"
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """What a cgroup-v2 memory limit leaves (limit − current), when the process runs under one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_memory(device: Any = "cpu") -> int | None:
    """Bytes free for new tensors on `device` (a CUDA device: its free memory; the CPU: the
    kernel's MemAvailable, capped by a cgroup limit), or None when it cannot be told."""
    if os.environ.get(ENV_MEMORY):
        return int(float(os.environ[ENV_MEMORY]))
    if getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    known = [n for n in (_meminfo_available(), _cgroup_room()) if n is not None]
    return min(known) if known else None


def check_memory(what: str, parts: Mapping[str, int], device: Any = "cpu", advice: str = "") -> None:
    """ResourceError when the summed `parts` (name → bytes, a lower bound of the work's peak)
    exceed what `device` has free; the message lists every part and the advice."""
    need = sum(parts.values())
    have = available_memory(device)
    if have is None or need <= have:
        return
    listed = ", ".join(f"{name} {gib(size)}" for name, size in parts.items() if size)
    raise ResourceError(
        f"{what} needs at least {gib(need)} ({listed}) but {device} has {gib(have)} free"
        f"{f': {advice}' if advice else ''}"
    )


def check_disk(folder: str | Path, need: int, what: str) -> None:
    """DiskFullError when the filesystem of `folder` (or its nearest existing parent) has less than
    `need` bytes free."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise DiskFullError(
            errno.ENOSPC, f"{what} needs {gib(need)} on disk but {probe} has {gib(free)} free: free space or "
            "choose another folder"
        )  # fmt: skip


def preallocate(path: str | Path) -> None:
    """Reserve the blocks of a file already sized (a new memory map is sparse): a full disk is then
    an OSError here instead of a SIGBUS at the first write through the map, which kills the process."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        if size:
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without it: nothing reserved
                    return
                raise


def is_disk_full(exc: BaseException) -> bool:
    """An OSError of a full disk or quota that no DiskFullError has named yet."""
    return isinstance(exc, OSError) and not isinstance(exc, DiskFullError) and exc.errno in FULL_DISK_ERRNOS


def disk_full_error(folder: str | Path, what: str) -> DiskFullError:
    """The DiskFullError of a write into `folder` that ran out of space (raise it from the OSError)."""
    try:
        free = gib(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    return DiskFullError(
        errno.ENOSPC, f"the disk filled while writing {what} in {folder} ({free} free now); nothing half-written "
        "was kept: free space and run it again"
    )  # fmt: skip


@contextlib.contextmanager
def disk_full_named(folder: str | Path, what: str) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT inside the block into a DiskFullError naming `what` and `folder`."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise disk_full_error(folder, what) from exc
