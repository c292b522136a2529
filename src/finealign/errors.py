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
