"""Problem sizes and the random inputs a profile runs on."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from finealign.checks import check_positive_int
from finealign.errors import ConfigError
from finealign.tokens import TokenBatch


@dataclass(frozen=True)
class ProblemShape:
    """nv images × nt captions, lv visual and lt text tokens per item, embedding dim."""

    nv: int = 16
    nt: int = 80
    lv: int = 50
    lt: int = 32
    dim: int = 256

    def __post_init__(self) -> None:
        for key in ("nv", "nt", "lv", "lt", "dim"):
            value = getattr(self, key)
            check_positive_int(f"problem size {key}", value)

    def scaled(self, axis: str, value: int) -> ProblemShape:
        """This shape with one axis set to `value`, keeping the other ratios:
        `n` sets nv=value and nt=value·(nt/nv) (a gallery of N images × 5N captions stays 1:5);
        `tokens` sets lv=value and lt=value·(lt/lv); `dim` sets the embedding dim."""
        if axis == "n":
            return replace(self, nv=value, nt=max(1, round(value * self.nt / self.nv)))
        if axis == "tokens":
            return replace(self, lv=value, lt=max(1, round(value * self.lt / self.lv)))
        if axis == "dim":
            return replace(self, dim=value)
        raise ConfigError(f"unknown scaling axis {axis!r}; choose n, tokens or dim")

    def as_dict(self) -> dict[str, int]:
        return {"nv": self.nv, "nt": self.nt, "lv": self.lv, "lt": self.lt, "dim": self.dim}


def random_batch(n: int, length: int, dim: int, *, generator: torch.Generator, min_fraction: float = 0.5) -> TokenBatch:
    """Gaussian tokens (never zero: an all-zero input can take fast paths, e.g. in sparse or
    early-exit kernels, and gives optimistic timings), a pooled vector, and a realistic mask where
    each item keeps between `min_fraction`·length and length real tokens."""
    tokens = torch.randn(n, length, dim, generator=generator)
    low = max(1, int(min_fraction * length))
    lengths = torch.randint(low, length + 1, (n,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    pooled = torch.randn(n, dim, generator=generator)
    return TokenBatch(tokens, mask, pooled)


def random_input_sets(
    shape: ProblemShape,
    count: int,
    device: torch.device,
    dtype: torch.dtype,
    *,
    seed: int = 0,
    requires_grad: bool = False,
) -> list[tuple[TokenBatch, TokenBatch]]:
    """`count` independent (visual, text) pairs; timing rotates through them so no repeat sees the
    very inputs the previous one left in cache."""
    if count < 1:
        raise ConfigError(f"input_sets must be >= 1, got {count}")
    g = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(count):
        v = random_batch(shape.nv, shape.lv, shape.dim, generator=g).to(device, dtype=dtype)
        t = random_batch(shape.nt, shape.lt, shape.dim, generator=g).to(device, dtype=dtype)
        if requires_grad:  # tokens and pooled vectors: `global` reads only the latter
            for tensor in (v.tokens, t.tokens, v.pooled, t.pooled):
                if tensor is not None:  # random_batch always gives pooled vectors
                    tensor.requires_grad_(True)
        sets.append((v, t))
    return sets
