"""finealign: fine-grained cross-modal alignment for vision-language retrieval, on equal terms."""

from finealign.errors import (
    ConfigError,
    DataError,
    FinealignError,
    PluginError,
    ShapeError,
    UnknownNameError,
)
from finealign.tokens import TokenBatch

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "FinealignError",
    "PluginError",
    "ShapeError",
    "TokenBatch",
    "UnknownNameError",
    "__version__",
]
