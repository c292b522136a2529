"""The one data structure every encoder produces and every aligner consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TokenBatch:
    """A batch of token sequences from one modality.

    tokens: (N, L, d) float token features.
    mask:   (N, L) bool, True where the token is real, False where it is padding.
    pooled: optional (N, d) global feature (CLS / pooled / mean), used by `global`,
            `two_stage` and by `tokenflow` for its token-importance marginals.
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index) -> TokenBatch:
        """Select items (slice, index tensor or int) along the batch dimension."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TokenBatch(
            self.tokens[index],
            self.mask[index],
            None if self.pooled is None else self.pooled[index],
        )

    def to(self, *args, **kwargs) -> TokenBatch:
        """Move/cast like Tensor.to; the mask keeps its bool dtype."""
        mask_args = [a for a in args if not isinstance(a, torch.dtype)]
        mask_kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
        return TokenBatch(
            self.tokens.to(*args, **kwargs),
            self.mask.to(*mask_args, **mask_kwargs),
            None if self.pooled is None else self.pooled.to(*args, **kwargs),
        )

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    def mean_pooled(self) -> Tensor:
        """Masked mean of the tokens: the global vector when an encoder gives none."""
        # where() rather than multiply, so NaN/inf in padding cannot leak into the mean.
        real = self.mask.unsqueeze(-1)
        total = torch.where(real, self.tokens, torch.zeros((), dtype=self.tokens.dtype, device=self.tokens.device)).sum(
            1
        )
        return total / real.sum(1).clamp_min(1).to(self.tokens.dtype)

    def with_pooled(self) -> TokenBatch:
        """This batch, with `pooled` filled by the masked mean when it is missing."""
        if self.pooled is not None:
            return self
        return TokenBatch(self.tokens, self.mask, self.mean_pooled())
