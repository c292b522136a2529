"""Shared fixtures: random token batches with random padding, and data/GPU availability."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from finealign.tokens import TokenBatch

# Without CUDA, the Triton kernels run in Triton's CPU interpreter. Triton reads TRITON_INTERPRET
# when a kernel is decorated, and finealign imports its kernel modules only on first use, so
# setting it here (before any test calls a kernel) is early enough. backend="auto" still picks
# torch for CPU tensors; only tests that ask for backend="triton" run the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (`-n auto`: one worker per core) each worker, and what it starts, uses one
# thread: two workers of two OpenMP threads each on two cores would wait for each other.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"


def random_batch(
    n: int,
    length: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    pooled: bool = True,
    min_len: int = 1,
) -> TokenBatch:
    """A batch whose items have random real lengths in [min_len, length] (the rest is padding).

    Padded positions hold large random values, so any aligner that lets padding leak into a score
    gives a visibly wrong answer.
    """
    g = generator or torch.Generator().manual_seed(0)
    tokens = torch.randn(n, length, dim, generator=g, dtype=torch.float64)
    lengths = torch.randint(min_len, length + 1, (n,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    # Shuffle positions so that padding is not always at the end.
    perm = torch.argsort(torch.rand(n, length, generator=g), dim=1)
    mask = torch.gather(mask, 1, perm)
    tokens = torch.where(mask[..., None], tokens, 50.0 * torch.randn_like(tokens).abs() + 10.0)
    pooled_vec = torch.randn(n, dim, generator=g, dtype=torch.float64) if pooled else None
    batch = TokenBatch(tokens, mask, pooled_vec)
    return batch.to(dtype)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly without CUDA; realdata tests skip without ../shared/data/flickr8k."""
    skip_gpu = pytest.mark.skip(reason="needs CUDA; none is available on this machine")
    skip_data = pytest.mark.skip(reason=f"real Flickr8k not found at {FLICKR8K}")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "realdata" in item.keywords and not (FLICKR8K / "dataset_flickr8k.json").exists():
            item.add_marker(skip_data)
