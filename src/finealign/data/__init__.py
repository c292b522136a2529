"""The dataset library. Importing this package registers every built-in dataset.

Each dataset is one module plus `@DATASETS.register(...)`; add the module's import below.
"""

from finealign.data import (
    cached,  # noqa: F401  (registers "cached")
    features,  # noqa: F401  (registers "features")
    karpathy,  # noqa: F401  (registers "karpathy", "flickr8k", "flickr30k", "coco")
    msrvtt,  # noqa: F401  (registers "msrvtt")
    toy,  # noqa: F401  (registers "toy")
)
from finealign.data.base import RetrievalSplit

__all__ = ["RetrievalSplit"]
