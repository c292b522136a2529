"""The loss library. Importing this package registers every built-in loss.

Every loss is called as `loss(sim, positives, extras)` on the (B_img, B_txt) similarity matrix of
any aligner; see losses/base.py.
"""

from finealign.losses import (
    cmc,  # noqa: F401  (registers "cmc")
    infonce,  # noqa: F401  (registers "infonce")
    triplet,  # noqa: F401  (registers "triplet")
)
from finealign.losses.base import Loss, check_similarity, hinge_terms

__all__ = ["Loss", "check_similarity", "hinge_terms"]
