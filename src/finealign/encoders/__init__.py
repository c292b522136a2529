"""The encoder library. Importing this package registers every built-in encoder.

Each encoder is one module plus one `@ENCODERS.register(...)`; add the module's import below.
"""

from finealign.encoders import (
    bigru,  # noqa: F401  (registers "bigru")
    hf_text,  # noqa: F401  (registers "hf_text")
    minilm,  # noqa: F401  (registers "minilm")
    mobilenet,  # noqa: F401  (registers "mobilenet_v2")
    openclip,  # noqa: F401  (registers "openclip_vision", "openclip_text")
    precomputed,  # noqa: F401  (registers "precomputed")
    staged,  # noqa: F401  (registers "staged")
    timm_vision,  # noqa: F401  (registers "timm")
    video,  # noqa: F401  (registers "video")
)
from finealign.encoders.base import Encoder

__all__ = ["Encoder"]
