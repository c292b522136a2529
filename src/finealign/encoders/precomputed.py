"""An encoder for precomputed features: frozen backbones run once, small learned heads on top.

Input: per item, a dict {"tokens": (L, d) array, "mask": (L,) bool, "pooled": (d,) or None} (a row
of `finealign.data.features.FeatureRows`), or a bare (L, d) array whose tokens are all real.
`load` keeps only the real tokens, `collate` pads a batch to its longest item, and the head maps
every token to `embed_dim`:

    linear       one Linear layer (embed_dim 0: identity, the raw features)
    mlp          Linear → GELU → Dropout → Linear
    transformer  Linear, then `layers` pre-norm Transformer layers over the tokens with the pooled
                 vector prepended as a summary token (its output is the new pooled vector)

For linear/mlp the pooled vector is head(pooled), or the masked mean of the output tokens when
the features come without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import torch
from torch import Tensor, nn

from finealign.checks import check_choice, check_positive_int, is_int
from finealign.encoders.base import Encoder
from finealign.encoders.common import check_embed_dim
from finealign.errors import ConfigError, ShapeError
from finealign.registry import ENCODERS
from finealign.tokens import TokenBatch


class PrecomputedItem(TypedDict):
    """What `load` gives for one item."""

    tokens: Tensor  # (L, d) real tokens only
    pooled: Tensor | None  # (d,)


class PrecomputedBatch(TypedDict):
    """What `collate` gives for a batch of items."""

    tokens: Tensor  # (B, L, d), zero-padded to the longest item
    mask: Tensor  # (B, L) bool
    pooled: Tensor | None  # (B, d) when every item has one


@dataclass
class PrecomputedConfig:
    embed_dim: int = 256  # joint space width (0: keep the raw feature width, linear head only)
    in_dim: int | None = None  # feature width; filled from the dataset by the engine when null
    head: str = "linear"  # linear | mlp | transformer
    hidden_dim: int | None = None  # mlp hidden width / transformer feed-forward width (default 2·embed_dim)
    layers: int = 1  # transformer layers
    heads: int = 4  # transformer attention heads (must divide embed_dim)
    dropout: float = 0.0
    modality: str = "vision"  # which side it serves: vision | text | video

    def __post_init__(self) -> None:
        check_embed_dim(self.embed_dim)
        check_positive_int("in_dim", self.in_dim, optional=True)
        check_choice("head", self.head, ("linear", "mlp", "transformer"))
        if self.head != "linear" and self.embed_dim == 0:
            raise ConfigError(f"head {self.head!r} needs embed_dim > 0")
        check_positive_int("hidden_dim", self.hidden_dim, optional=True)
        if not is_int(self.layers) or not 1 <= self.layers <= 4:
            raise ConfigError(f"layers must be an int in [1, 4] (a small head), got {self.layers!r}")
        check_positive_int("heads", self.heads)
        if self.head == "transformer" and self.embed_dim % self.heads:
            raise ConfigError(f"heads ({self.heads}) must divide embed_dim ({self.embed_dim})")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        check_choice("modality", self.modality, ("vision", "text", "video"))


def build_head(cfg: PrecomputedConfig, in_dim: int) -> tuple[nn.Module, nn.Module | None]:
    """(per-token map to embed_dim, optional Transformer context) of `cfg.head` over `in_dim`-d
    tokens: shared by the `precomputed` and `staged` encoders."""
    embed_dim = cfg.embed_dim or in_dim
    hidden = cfg.hidden_dim or 2 * embed_dim
    proj: nn.Module
    if cfg.head == "mlp":
        proj = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(hidden, embed_dim)
        )
    elif cfg.embed_dim == 0:
        proj = nn.Identity()
    else:
        proj = nn.Linear(in_dim, embed_dim)
    context: nn.Module | None = None
    if cfg.head == "transformer":
        layer = nn.TransformerEncoderLayer(embed_dim, cfg.heads, hidden, cfg.dropout, batch_first=True, norm_first=True)
        context = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
    return proj, context


def apply_head(
    proj: nn.Module, context: nn.Module | None, tokens: Tensor, mask: Tensor, pooled: Tensor | None
) -> TokenBatch:
    """The head on (B, L, d) tokens: see the module docstring for how the pooled vector is made."""
    out = proj(tokens)
    if context is None:
        pooled_out = proj(pooled) if pooled is not None else None
        return TokenBatch(out, mask, pooled_out).with_pooled()
    summary = proj(pooled) if pooled is not None else TokenBatch(out, mask).mean_pooled()
    sequence = torch.cat([summary[:, None], out], dim=1)
    keep = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
    sequence = context(sequence, src_key_padding_mask=~keep)
    return TokenBatch(sequence[:, 1:], mask, sequence[:, 0])


@ENCODERS.register("precomputed")
class PrecomputedEncoder(Encoder[PrecomputedConfig]):
    """Learned head (linear / mlp / transformer) on precomputed token features."""

    Config = PrecomputedConfig

    def __init__(self, config: PrecomputedConfig | None = None):
        super().__init__()
        self.config = cfg = config if config is not None else PrecomputedConfig()
        if cfg.in_dim is None:
            raise ConfigError(
                "precomputed encoder needs in_dim (the feature width); the engine fills it from the "
                "dataset, or set encoder.vision.in_dim / encoder.text.in_dim"
            )
        self.modality = cfg.modality
        self.embed_dim = cfg.embed_dim or cfg.in_dim
        self.proj, self.context = build_head(cfg, cfg.in_dim)

    def load(self, raw: Any) -> PrecomputedItem:
        if isinstance(raw, dict):
            tokens, mask, pooled = raw["tokens"], raw.get("mask"), raw.get("pooled")
        else:
            tokens, mask, pooled = raw, None, None
        # np.array copies: rows may be read-only memory maps, which torch will not wrap
        tokens = torch.from_numpy(np.array(tokens, dtype=np.float32))
        if tokens.dim() != 2:
            raise ShapeError(f"precomputed item tokens must be (L, d), got shape {tuple(tokens.shape)}")
        if mask is not None:
            tokens = tokens[torch.from_numpy(np.array(mask, dtype=bool))]
        if len(tokens) == 0:
            raise ShapeError("precomputed item has no real token (its mask is all False)")
        pooled_t = None if pooled is None else torch.from_numpy(np.array(pooled, dtype=np.float32))
        return {"tokens": tokens, "pooled": pooled_t}

    def collate(self, items: Sequence[PrecomputedItem]) -> PrecomputedBatch:
        length = max(len(item["tokens"]) for item in items)
        dim = items[0]["tokens"].shape[1]
        tokens = torch.zeros(len(items), length, dim)
        mask = torch.zeros(len(items), length, dtype=torch.bool)
        for i, item in enumerate(items):
            n = len(item["tokens"])
            tokens[i, :n] = item["tokens"]
            mask[i, :n] = True
        given = [item["pooled"] for item in items if item["pooled"] is not None]
        pooled = torch.stack(given) if len(given) == len(items) else None
        return {"tokens": tokens, "mask": mask, "pooled": pooled}

    def forward(self, batch: PrecomputedBatch) -> TokenBatch:
        tokens, mask, pooled = batch["tokens"], batch["mask"], batch.get("pooled")
        assert tokens is not None and mask is not None
        if tokens.shape[-1] != self.config.in_dim:
            raise ShapeError(
                f"precomputed {self.modality} features are {tokens.shape[-1]}-d but in_dim is {self.config.in_dim}"
            )
        return apply_head(self.proj, self.context, tokens, mask, pooled)
