"""Error types. Every error names the problem (which tensor, which file, which value)."""

from __future__ import annotations


class FinealignError(Exception):
    """Base class of every error finealign raises on purpose."""


class ShapeError(FinealignError, ValueError):
    """A tensor has the wrong rank, size, dtype, or holds NaN/inf."""


class ConfigError(FinealignError, ValueError):
    """A configuration value is out of range, of the wrong type, or unknown."""


class UnknownNameError(FinealignError, KeyError):
    """A registry lookup failed; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class PluginError(FinealignError, ImportError):
    """A plugin entry point could not be imported; the message says what to install."""


class DataError(FinealignError, FileNotFoundError):
    """A dataset file is missing or corrupt; the message names the path."""


class DivergenceError(FinealignError, FloatingPointError):
    """Training diverged (NaN/inf or runaway loss, embeddings, scores or temperature): a failure
    with the step it happened at and what to change, never a result."""


class ResourceError(FinealignError, MemoryError):
    """An estimate made from the shapes says the work needs more memory than the machine has."""


class DiskFullError(FinealignError, OSError):
    """A writer found (or ran into) too little free disk space; nothing half-written is left.
    Raised as DiskFullError(errno.ENOSPC, message)."""

    def __str__(self) -> str:  # OSError would prefix "[Errno 28]"
        return str(self.strerror) if self.strerror else super().__str__()
