"""The kernels' custom ops (kernels/ops.py): FlopCounterMode counts the fused kernels' matmul work,
and counts it exactly as it counts the torch paths' — so `finealign profile` reports FLOPs and
achieved throughput for the fused aligners too."""

from __future__ import annotations

import pytest
import torch

from finealign.kernels import maxsim_scores, sinkhorn_flow_scores
from finealign.profiling.flops import count_flops
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch
from tests.kernels.inputs import pooled, tokens

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _inputs(gen):
    v, vm = tokens(4, 7, 12, gen)
    t, tm = tokens(6, 5, 12, gen)
    return v, vm, t, tm


def test_fused_maxsim_counts_the_same_flops_as_the_torch_path(gen):
    v, vm, t, tm = _inputs(gen)
    counts = {
        b: count_flops(lambda: maxsim_scores(v, vm, t, tm, "lse", "both", backend=b), ()).total
        for b in ("triton", "torch")
    }
    assert counts["triton"] == counts["torch"] == 2 * 4 * 7 * 6 * 5 * 12


def test_backward_and_pairs_are_counted(gen):
    v, vm, t, tm = _inputs(gen)
    pair_matmul = 2 * 7 * 5 * 12

    def train_step():
        leaf = v.clone().requires_grad_()
        maxsim_scores(leaf, vm, t, tm, "mean", "text", backend="triton").sum().backward()

    # forward + backward recompute + dv (t needs no gradient)
    assert count_flops(train_step, ()).total == 3 * 24 * pair_matmul
    pairs = torch.tensor([[0, 1], [3, 5], [3, 5]])
    assert count_flops(lambda: maxsim_scores(v, vm, t, tm, pairs=pairs, backend="triton"), ()).total == 3 * pair_matmul


@pytest.mark.parametrize("importance", [False, True])
def test_fused_sinkhorn_counts_the_same_flops_as_the_torch_path(importance, gen):
    v, vm, t, tm = _inputs(gen)
    marginals = dict(visual_pooled=pooled(v, vm), text_pooled=pooled(t, tm)) if importance else {}
    counts = {
        b: count_flops(lambda: sinkhorn_flow_scores(v, vm, t, tm, iterations=3, backend=b, **marginals), ()).total
        for b in ("triton", "torch")
    }
    assert counts["triton"] == counts["torch"] > 0


def test_profiled_aligner_flops_count_the_work_each_backend_does(gen):
    """The fused kernel's registered count covers every (padded) token pair; the torch path packs
    the captions' real words (word → region direction), so it counts only real-word products."""
    v, vm, t, tm = _inputs(gen)
    visual, text = TokenBatch(v, vm), TokenBatch(t, tm)
    nv, lv, d = v.shape
    real_words = int(tm.sum())
    for name in ("mean_max", "hard"):
        fused, torch_path = (
            count_flops(create_aligner(name, backend=b), (visual, text)).total for b in ("triton", "torch")
        )
        assert fused == 2 * nv * lv * t.shape[0] * t.shape[1] * d
        assert torch_path == 2 * nv * lv * real_words * d < fused


def test_fused_sinkhorn_training_step_is_counted(gen):
    """Forward (similarities + importance logits), then backward: recompute both, plus one
    matmul each for the v and t gradients."""
    v, vm, t, tm = _inputs(gen)
    vectors = dict(visual_pooled=pooled(v, vm), text_pooled=pooled(t, tm))
    sims, importance = 2 * 4 * 7 * 6 * 5 * 12, 2 * 4 * 6 * (7 + 5) * 12

    def train_step():
        a, b = v.clone().requires_grad_(), t.clone().requires_grad_()
        sinkhorn_flow_scores(a, vm, b, tm, iterations=2, backend="triton", **vectors).sum().backward()

    assert count_flops(train_step, ()).total == 2 * (sims + importance) + 2 * sims
