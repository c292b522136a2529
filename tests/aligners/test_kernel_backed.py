"""Kernel-backed aligners (aligners/kernel_backed.py): `score_pairs` goes through the pair kernels
(Triton's CPU interpreter here) when nothing needs a gradient, through the chunked torch path
when something does, and both give the matrix's entries; two_stage's re-ranking uses them."""

from __future__ import annotations

import pytest
import torch

from finealign.aligners.kernel_backed import KernelAligner
from finealign.errors import ConfigError
from finealign.registry import create_aligner
from tests.conftest import random_batch

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

KERNEL_ALIGNERS = {
    "mean_max": dict(direction="both"),
    "hard": dict(direction="both", pooling="lse"),
    "weighted_mean_max": dict(dim=12),
    "tokenflow": dict(iterations=4, tolerance=0),
    "tokenflow-scaling": dict(iterations=4, tolerance=0, kernel_domain="scaling"),
}


def _build(key: str, backend: str) -> KernelAligner:
    aligner = create_aligner(key.split("-")[0], backend=backend, **KERNEL_ALIGNERS[key])
    if key == "weighted_mean_max":  # non-zero weight layers, so the weights are not uniform
        torch.manual_seed(0)
        for layer in (aligner.text_weight, aligner.visual_weight):
            torch.nn.init.normal_(layer.weight)
    assert isinstance(aligner, KernelAligner)
    return aligner


def _spy_pairs(aligner: KernelAligner, monkeypatch) -> list:
    """Records the `pairs` argument of each kernel call."""
    seen = []
    original = aligner.kernel_scores

    def spy(visual, text, pairs):
        seen.append(pairs)
        return original(visual, text, pairs)

    monkeypatch.setattr(aligner, "kernel_scores", spy)
    return seen


@pytest.mark.parametrize("key", list(KERNEL_ALIGNERS))
def test_score_pairs_uses_the_pair_kernel_and_equals_the_matrix(key, gen, monkeypatch):
    visual, text = random_batch(4, 6, 12, generator=gen), random_batch(5, 7, 12, generator=gen)
    pairs = torch.tensor([[0, 0], [3, 4], [1, 2], [3, 4], [2, 0]])
    fused, plain = _build(key, "triton"), _build(key, "torch")
    if key == "weighted_mean_max":
        plain.load_state_dict(fused.state_dict())
    seen = _spy_pairs(fused, monkeypatch)
    with torch.no_grad():
        got = fused.score_pairs(visual, text, pairs)
        matrix = plain(visual, text)
        reference = plain.score_pairs(visual, text, pairs)
    assert len(seen) == 1 and torch.equal(seen[0].cpu(), pairs)
    torch.testing.assert_close(got, matrix[pairs[:, 0], pairs[:, 1]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("key", ["mean_max", "weighted_mean_max", "tokenflow"])
def test_score_pairs_with_gradients_takes_the_torch_path(key, gen, monkeypatch):
    visual, text = random_batch(3, 5, 12, generator=gen), random_batch(4, 6, 12, generator=gen)
    aligner = _build(key, "triton")
    seen = _spy_pairs(aligner, monkeypatch)
    tokens = visual.tokens.clone().requires_grad_()
    visual = type(visual)(tokens, visual.mask, visual.pooled)
    scores = aligner.score_pairs(visual, text, torch.tensor([[0, 1], [2, 3]]))
    scores.sum().backward()
    assert all(p is None for p in seen)  # no pair-kernel call (full-matrix calls, if any, have a backward)
    assert tokens.grad is not None and torch.isfinite(tokens.grad).all() and tokens.grad.abs().sum() > 0


def test_weighted_mean_max_pairs_need_no_gradient_of_its_weights(gen, monkeypatch):
    """Its weight layers are parameters: in training (grad enabled) they need the torch path too."""
    visual, text = random_batch(3, 5, 12, generator=gen), random_batch(4, 6, 12, generator=gen)
    aligner = _build("weighted_mean_max", "triton")
    seen = _spy_pairs(aligner, monkeypatch)
    aligner.score_pairs(visual, text, torch.tensor([[0, 1]])).sum().backward()
    assert seen == [] and aligner.text_weight.weight.grad is not None


@pytest.mark.parametrize("local", ["mean_max", "tokenflow"])
def test_two_stage_reranks_with_the_pair_kernel(local, gen):
    visual, text = random_batch(6, 5, 12, generator=gen), random_batch(9, 4, 12, generator=gen)
    options = dict(iterations=3, tolerance=0) if local == "tokenflow" else {}
    with torch.no_grad():
        scores = {
            backend: create_aligner("two_stage", local=local, top_k=3, local_options=dict(options, backend=backend))(
                visual, text
            )
            for backend in ("triton", "torch")
        }
    torch.testing.assert_close(scores["triton"], scores["torch"], atol=1e-5, rtol=1e-5)


def test_tokenflow_rejects_an_unknown_kernel_domain():
    with pytest.raises(ConfigError, match="domain must be one of"):
        create_aligner("tokenflow", kernel_domain="linear")
