"""The encoder library. Importing this package registers every built-in encoder.

Each encoder is one module plus one `@ENCODERS.register(...)`; add the module's import below.
"""

from finealign.encoders.base import Encoder
from finealign.encoders import timm_vision  # noqa: F401  (registers "timm")
from finealign.encoders import hf_text  # noqa: F401  (registers "hf_text")
from finealign.encoders import minilm  # noqa: F401  (registers "minilm")
from finealign.encoders import mobilenet  # noqa: F401  (registers "mobilenet_v2")
from finealign.encoders import bigru  # noqa: F401  (registers "bigru")
from finealign.encoders import video  # noqa: F401  (registers "video")
from finealign.encoders import precomputed  # noqa: F401  (registers "precomputed")

__all__ = ["Encoder"]
