"""The dataset library. Importing this package registers every built-in dataset.

Each dataset is one module plus `@DATASETS.register(...)`; add the module's import below.
"""

from finealign.data.base import RetrievalSplit
from finealign.data import karpathy  # noqa: F401  (registers "karpathy", "flickr8k", "flickr30k", "coco")
from finealign.data import msrvtt  # noqa: F401  (registers "msrvtt")
from finealign.data import features  # noqa: F401  (registers "features")
from finealign.data import toy  # noqa: F401  (registers "toy")
from finealign.data import cached  # noqa: F401  (registers "cached")

__all__ = ["RetrievalSplit"]
