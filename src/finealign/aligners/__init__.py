"""The aligner library. Importing this package registers every built-in aligner.

Each aligner is one module plus one `@ALIGNERS.register(...)`; add the module's import below.
"""

from finealign.aligners import (
    cross_attention,  # noqa: F401  (registers "cross_attention")
    global_,  # noqa: F401  (registers "global")
    hard,  # noqa: F401  (registers "hard")
    mean_max,  # noqa: F401  (registers "mean_max")
    tokenflow,  # noqa: F401  (registers "tokenflow")
    two_stage,  # noqa: F401  (registers "two_stage")
    weighted_mean_max,  # noqa: F401  (registers "weighted_mean_max")
)
from finealign.aligners.base import Aligner, AlignerConfig, TokenAlignment

__all__ = ["Aligner", "AlignerConfig", "TokenAlignment"]
