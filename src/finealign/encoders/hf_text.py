"""Any Hugging Face text encoder (BERT, RoBERTa, MiniLM...) as a token encoder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from finealign.checks import check_choice, check_positive_int
from finealign.encoders.common import (
    BackboneEncoder,
    check_embed_dim,
    file_identity,
    output_dim,
    projection,
)
from finealign.errors import ConfigError, DataError
from finealign.registry import ENCODERS
from finealign.tokens import TokenBatch

_POOLINGS = ("cls", "mean")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class HFTextConfig:
    model_name_or_path: str = "bert-base-uncased"  # hub name, or a local folder (works offline)
    embed_dim: int = 1024  # 0 = raw hidden states (no projection)
    pooling: str = "cls"  # global vector: "cls" ([CLS] state) or "mean" (masked mean of states)
    max_length: int = 64
    freeze: bool = False
    # False drops [CLS]/[SEP] from the tokens the aligners see (they still feed the pooled vector).
    keep_special_tokens: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.model_name_or_path, str):
            raise ConfigError(f"model_name_or_path must be a string, got {self.model_name_or_path!r}")
        check_embed_dim(self.embed_dim)
        check_choice("pooling", self.pooling, _POOLINGS)
        check_positive_int("max_length", self.max_length)


def _resolved(name_or_path: str) -> str:
    """A local folder as an absolute path (DataError when it is missing), else the hub name."""
    local = Path(name_or_path).expanduser()
    looks_local = local.is_absolute() or name_or_path.startswith((".", "~")) or local.exists()
    if looks_local and not local.is_dir():
        raise DataError(f"Hugging Face model folder not found: {local}")
    return str(local) if looks_local else name_or_path


def _unreachable(source: str, exc: OSError) -> DataError:
    return DataError(
        f"cannot load Hugging Face model {source!r}: {exc}. Pass a local folder "
        "(model_name_or_path=/path/to/model) when the hub is unreachable."
    )


def _load_pretrained(name_or_path: str) -> tuple[Any, Any]:
    from transformers import AutoModel

    source = _resolved(name_or_path)
    tokenizer = load_tokenizer(source)
    try:
        return tokenizer, AutoModel.from_pretrained(source)
    except OSError as exc:
        raise _unreachable(source, exc) from exc


def load_tokenizer(name_or_path: str) -> Any:
    """The tokenizer alone (no weights): what re-tokenising cached captions needs."""
    from transformers import AutoTokenizer

    source = _resolved(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise _unreachable(source, exc) from exc


@ENCODERS.register("hf_text")
class HFTextEncoder(BackboneEncoder[HFTextConfig]):
    """A Hugging Face encoder: last hidden states as tokens, [CLS] or mean as the global vector."""

    Config = HFTextConfig
    modality = "text"
    backbone: Any  # a transformers model, used through its own API (config.hidden_size, last_hidden_state)

    def __init__(self, config: HFTextConfig | None = None):
        super().__init__()
        self.config = config or self.Config()
        self.source = self.resolve_source()
        self.tokenizer, self.backbone = _load_pretrained(self.source)
        self.raw_dim = int(self.backbone.config.hidden_size)
        self.proj = projection(self.raw_dim, self.config.embed_dim)
        self.embed_dim = output_dim(self.raw_dim, self.config.embed_dim)
        self.set_frozen(self.config.freeze)

    def resolve_source(self) -> str:
        """Where the weights come from (`source_of` this encoder's config)."""
        return self.source_of(self.config)

    @classmethod
    def source_of(cls, config: HFTextConfig) -> str:
        """Where the weights and tokenizer of `config` come from; presets override this."""
        return config.model_name_or_path

    def load(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise DataError(f"a text encoder needs a caption string, got {type(raw).__name__}")
        return raw

    def collate(self, items: Sequence[str]) -> dict[str, Tensor]:
        return dict(
            self.tokenizer(
                list(items),
                padding=True,
                truncation=True,
                max_length=self.config.max_length,
                return_tensors="pt",
                return_special_tokens_mask=True,
            )
        )

    def forward(self, batch: dict[str, Tensor]) -> TokenBatch:
        batch = dict(batch)
        special = batch.pop("special_tokens_mask", None)
        attention = batch["attention_mask"].bool()
        with self.backbone_grad_context():
            hidden = self.backbone(**batch).last_hidden_state
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = attention.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        mask = attention
        if not self.config.keep_special_tokens and special is not None:
            mask = attention & ~special.bool()
        return TokenBatch(self.proj(hidden), mask, self.proj(pooled))

    def weights_identity(self) -> dict[str, Any]:
        folder = Path(self.source).expanduser()
        if folder.is_dir():
            files = [folder / f for f in _WEIGHT_FILES if (folder / f).is_file()]
            return {"files": [file_identity(f) for f in files]}
        return {"hub": self.source}
