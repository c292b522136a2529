"""Weighted token-wise interaction (DRL "WTI"): mean_max with learned per-token weights.

text → visual:  Σ_w  a_w · max_r s(w, r),   a = softmax over real words of head(word)
visual → text:  Σ_r  b_r · max_w s(w, r),   b = softmax over real regions of head(region)
"both" averages the two directions. A weight head per side:

* `weight_head: linear` (finealign's default): one Linear(d, 1), zero-initialised, so an untrained
  aligner gives uniform weights, i.e. exactly `mean_max`, and learns away from it — finealign's
  form, not DRL's;
* `weight_head: mlp` (DRL's `wti_arch 2`, tvr/models/modeling.py): Linear(d, d) → ReLU →
  Linear(d, 1), weights drawn from N(0, 0.02), biases zero.

`weight_input` says what the head reads: `prepared` (default) the tokens the similarities use
(unit vectors when `normalize` is on); `raw` the tokens before L2 normalisation, as DRL feeds its
head (identical with normalize=false). `zero_pad_text` / `zero_pad_visual`: DRL's fixed-length
zero padding (aligners/zero_padding.py). `method=drl_wti` selects the MLP head, raw input and
that padding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from finealign.aligners.base import (
    TokenAlignment,
    best_region_alignment,
    masked_fill_pairs,
    paired_token_similarities,
    token_similarities,
)
from finealign.aligners.kernel_backed import KernelAligner, KernelConfig
from finealign.aligners.pooling import accumulation_dtype, masked_softmax
from finealign.aligners.zero_padding import check_zero_padding, floor_at_zero_padding, has_zero_slots
from finealign.checks import check_positive_int
from finealign.errors import ConfigError, ShapeError
from finealign.kernels import maxsim_scores
from finealign.kernels.checks import DIRECTIONS  # "text", "visual", "both": the kernels' directions
from finealign.kernels.normalize import l2_normalize
from finealign.registry import ALIGNERS
from finealign.tokens import TokenBatch


@dataclass
class WeightedMeanMaxConfig(KernelConfig):
    dim: int | None = None  # token dimension d (required: it sizes the weight layers)
    # "text": weighted words → best region; "visual": weighted regions → best word; "both": mean.
    direction: str = "both"
    weight_head: str = "linear"  # "linear" (zero-initialised) or "mlp" (DRL wti_arch 2, N(0, 0.02))
    # What the weight head reads: "prepared" (the tokens the similarities use) or "raw" (before L2
    # normalisation, as DRL's head does; the same as "prepared" when normalize is off).
    weight_input: str = "prepared"
    # DRL's fixed-length zero padding (aligners/zero_padding.py; null: exact masking).
    zero_pad_text: int | None = None
    zero_pad_visual: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim is None:
            raise ConfigError("weighted_mean_max needs `dim`, the token dimension of its weight layers")
        check_positive_int("dim", self.dim)
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.weight_head not in ("linear", "mlp"):
            raise ConfigError(f"weight_head must be 'linear' or 'mlp', got {self.weight_head!r}")
        if self.weight_input not in ("prepared", "raw"):
            raise ConfigError(f"weight_input must be 'prepared' or 'raw', got {self.weight_input!r}")
        check_zero_padding(self.zero_pad_visual, self.zero_pad_text, self.direction)


@ALIGNERS.register("weighted_mean_max")
class WeightedMeanMaxAligner(KernelAligner[WeightedMeanMaxConfig]):
    """Mean-max with learned softmax token weights (DRL-WTI-style; DRL's own form is method=drl_wti)."""

    Config = WeightedMeanMaxConfig

    def __init__(self, config: WeightedMeanMaxConfig | None = None):
        super().__init__(config)
        cfg = self.config
        # Only the layers the direction uses exist, so no parameter is left without a gradient.
        head = self._zero_linear if cfg.weight_head == "linear" else self._drl_mlp
        assert cfg.dim is not None  # WeightedMeanMaxConfig rejects a missing dim
        self.text_weight = head(cfg.dim) if cfg.direction in ("text", "both") else None
        self.visual_weight = head(cfg.dim) if cfg.direction in ("visual", "both") else None

    @staticmethod
    def _zero_linear(dim: int) -> nn.Module:
        layer = nn.Linear(dim, 1)
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
        return layer

    @staticmethod
    def _drl_mlp(dim: int) -> nn.Module:
        first, last = nn.Linear(dim, dim), nn.Linear(dim, 1)
        mlp = nn.Sequential(first, nn.ReLU(), last)
        for layer in (first, last):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        return mlp

    @property
    def _raw_head_input(self) -> bool:
        """Whether the weight heads read other tokens (raw) than the similarities (unit vectors)."""
        return self.config.weight_input == "raw" and self.config.normalize

    def prepare(self, batch: TokenBatch) -> TokenBatch:
        if not self._raw_head_input:
            return super().prepare(batch)
        # DRL's head reads the tokens before L2 normalisation: they stay raw here (padding zeroed,
        # as Aligner.prepare does) and `_unit` normalises them where the similarities are taken.
        return TokenBatch(batch.tokens.masked_fill(~batch.mask.unsqueeze(-1), 0.0), batch.mask, batch.pooled)

    def _unit(self, batch: TokenBatch) -> TokenBatch:
        """The tokens the similarities use: `batch` itself, or its L2-normalised tokens when the
        heads read raw ones (see prepare)."""
        if not self._raw_head_input:
            return batch
        return TokenBatch(l2_normalize(batch.tokens), batch.mask, batch.pooled)

    def _kernel_applies(self, visual: TokenBatch, text: TokenBatch, has_backward: bool) -> bool:
        # The fused kernel masks padding exactly: DRL's zero slots, when some item has them, take
        # the torch path.
        cfg = self.config
        if has_zero_slots(visual, cfg.zero_pad_visual) or has_zero_slots(text, cfg.zero_pad_text):
            return False
        return super()._kernel_applies(visual, text, has_backward)

    def token_weights(self, batch: TokenBatch, head: nn.Module) -> Tensor:
        """(n, L) softmax weights over each item's real tokens (0 on padding), in ≥ fp32."""
        layers = list(head) if isinstance(head, nn.Sequential) else [head]
        if batch.dim != layers[0].in_features:
            raise ShapeError(
                f"weighted_mean_max was built with dim={layers[0].in_features} but the tokens have d={batch.dim}"
            )
        # In ≥ fp32 whatever the tokens' dtype, without converting the parameters themselves.
        logits = batch.tokens.to(accumulation_dtype(batch.tokens.dtype))
        for layer in layers:
            if isinstance(layer, nn.Linear):
                logits = nn.functional.linear(logits, layer.weight.to(logits.dtype), layer.bias.to(logits.dtype))
            else:
                logits = layer(logits)
        return masked_softmax(logits.squeeze(-1), batch.mask, dim=1)

    def kernel_scores(self, visual: TokenBatch, text: TokenBatch, pairs: Tensor | None) -> Tensor:
        # The fused kernel's weighted pooling has weight gradients too, so the weights can train.
        text_w = None if self.text_weight is None else self.token_weights(text, self.text_weight)
        visual_w = None if self.visual_weight is None else self.token_weights(visual, self.visual_weight)
        return maxsim_scores(
            self._unit(visual).tokens,
            visual.mask,
            self._unit(text).tokens,
            text.mask,
            "weighted",
            self.config.direction,
            text_weights=text_w,
            visual_weights=visual_w,
            backend="triton",
            pairs=pairs,
        )

    def score_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        return self.score_prepared_block(visual, self.prepare_block(text))

    def prepare_block(self, block: TokenBatch) -> WeightedBlock:
        # The captions' unit tokens and learned word weights depend on the captions alone.
        weights = None if self.text_weight is None else self.token_weights(block, self.text_weight)
        return WeightedBlock(block, self._unit(block), weights)

    def score_prepared_block(self, visual: TokenBatch, block: WeightedBlock) -> Tensor:
        text = block.batch
        sim = token_similarities(self._unit(visual), block.unit)
        sim = masked_fill_pairs(sim, visual.mask, text.mask, float("-inf"))
        return self._reduce(sim, visual, text, lambda x: x[:, None, :], lambda x: x[None, :, :], block.weights)

    def score_pair_block(self, visual: TokenBatch, text: TokenBatch) -> Tensor:
        # Item p with item p only: (c, Lv, Lt) instead of the c × c block.
        sim = paired_token_similarities(self._unit(visual), self._unit(text), float("-inf"))
        return self._reduce(sim, visual, text, lambda x: x, lambda x: x)

    def _reduce(
        self, sim: Tensor, visual: TokenBatch, text: TokenBatch, as_visual, as_text, text_weights: Tensor | None = None
    ) -> Tensor:
        """Scores from masked similarities (..., Lv, Lt) (padding = -inf). `as_visual`/`as_text`
        reshape per-item (n, L) weights and masks to broadcast against (..., L). `text_weights`:
        the captions' word weights when already computed (a prepared block)."""
        cfg = self.config
        parts = []
        if self.text_weight is not None:
            word_best = sim.amax(dim=-2)  # (..., Lt): best region per word
            word_best = floor_at_zero_padding(word_best, as_visual(visual.mask), cfg.zero_pad_visual)
            weights = self.token_weights(text, self.text_weight) if text_weights is None else text_weights
            parts.append(_weighted_sum(word_best, as_text(weights), as_text(text.mask)))
        if self.visual_weight is not None:
            region_best = sim.amax(dim=-1)  # (..., Lv): best word per region
            region_best = floor_at_zero_padding(region_best, as_text(text.mask), cfg.zero_pad_text)
            weights = self.token_weights(visual, self.visual_weight)
            parts.append(_weighted_sum(region_best, as_visual(weights), as_visual(visual.mask)))
        score = parts[0] if len(parts) == 1 else 0.5 * (parts[0] + parts[1])
        return score.to(sim.dtype)

    def explain(self, visual: TokenBatch, text: TokenBatch) -> TokenAlignment:
        """Each word's best region, weighted by the word's learned weight (uniform for 'visual')."""
        visual, text = self.prepare_pair(visual, text)
        word_weight: Tensor | float
        if self.text_weight is not None:
            word_weight = self.token_weights(text, self.text_weight)[0][text.mask[0]]
        else:
            word_weight = 1.0 / int(text.mask[0].sum())
        alignment = best_region_alignment(self, self._unit(visual), self._unit(text), word_weight)
        if self._raw_head_input:  # the score from the raw tokens, whose weights the heads give
            alignment = replace(alignment, score=float(self.score_block(visual, text)[0, 0].detach()))
        return alignment


@dataclass(frozen=True, eq=False)
class WeightedBlock:
    """A prepared caption block: the tokens as prepared, the unit tokens the similarities use,
    and the word weights (None without a text-side head)."""

    batch: TokenBatch
    unit: TokenBatch
    weights: Tensor | None

    def __len__(self) -> int:
        return len(self.batch)


def _weighted_sum(values: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
    """Σ weights · values over the last dim, real entries only."""
    # Padded values are -inf: zero them before multiplying, since even a masked -inf · 0 = NaN
    # turns into a NaN gradient for the weights.
    values = values.to(weights.dtype)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    return (weights * torch.where(mask, values, zero)).sum(-1)
