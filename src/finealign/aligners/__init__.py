"""The aligner library. Importing this package registers every built-in aligner.

Each aligner is one module plus one `@ALIGNERS.register(...)`; add the module's import below.
"""

from finealign.aligners.base import Aligner, AlignerConfig, TokenAlignment
from finealign.aligners import mean_max  # noqa: F401  (registers "mean_max")

__all__ = ["Aligner", "AlignerConfig", "TokenAlignment"]
