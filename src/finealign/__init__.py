"""finealign: fine-grained cross-modal alignment for vision-language retrieval, on equal terms."""

from finealign.errors import (
    ConfigError,
    DataError,
    FinealignError,
    PluginError,
    ShapeError,
    UnknownNameError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from finealign.tokens import TokenBatch

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`finealign.TokenBatch` on first use: importing finealign (the command line's `--help`,
    `list`, shell completion) must not import torch."""
    if name == "TokenBatch":
        from finealign.tokens import TokenBatch

        return TokenBatch
    raise AttributeError(f"module 'finealign' has no attribute {name!r}")


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
