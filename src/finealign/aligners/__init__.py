"""The aligner library. Importing this package registers every built-in aligner.

Each aligner is one module plus one `@ALIGNERS.register(...)`; add the module's import below.
"""

from finealign.aligners.base import Aligner, AlignerConfig, TokenAlignment
from finealign.aligners import mean_max  # noqa: F401  (registers "mean_max")
from finealign.aligners import global_  # noqa: F401  (registers "global")
from finealign.aligners import weighted_mean_max  # noqa: F401  (registers "weighted_mean_max")
from finealign.aligners import hard  # noqa: F401  (registers "hard")
from finealign.aligners import cross_attention  # noqa: F401  (registers "cross_attention")
from finealign.aligners import tokenflow  # noqa: F401  (registers "tokenflow")
from finealign.aligners import two_stage  # noqa: F401  (registers "two_stage")

__all__ = ["Aligner", "AlignerConfig", "TokenAlignment"]
