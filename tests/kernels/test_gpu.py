"""The compiled kernels on a real GPU at realistic sizes (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from finealign.kernels import maxsim_scores, sinkhorn_flow_scores
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch
from tests.kernels.inputs import token_weights, tokens

pytestmark = pytest.mark.gpu


def _cuda_inputs(nv, lv, nt, lt, d, dtype=torch.bfloat16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    v, vm = tokens(nv, lv, d, gen)
    t, tm = tokens(nt, lt, d, gen)
    tw, vw = token_weights(tm, gen), token_weights(vm, gen)
    return [x.cuda() for x in (v.to(dtype), vm, t.to(dtype), tm, tw.float(), vw.float())]


@pytest.mark.parametrize("direction", ["text", "visual", "both"])
@pytest.mark.parametrize("pooling", ["mean", "weighted", "lse"])
def test_forward_bf16_matches_fp32_torch_on_the_same_inputs(pooling, direction):
    v, vm, t, tm, tw, vw = _cuda_inputs(67, 50, 301, 32, 512)
    kw = dict(text_weights=tw, visual_weights=vw) if pooling == "weighted" else {}
    got = maxsim_scores(v, vm, t, tm, pooling, direction, 0.1, backend="triton", **kw)
    ref = maxsim_scores(v.float(), vm, t.float(), tm, pooling, direction, 0.1, backend="torch", **kw)
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=2e-4)


def test_forward_fp32_matches_float64():
    v, vm, t, tm, _, _ = _cuda_inputs(9, 37, 13, 77, 300, dtype=torch.float32)
    got = maxsim_scores(v, vm, t, tm, "mean", "both", backend="triton")
    ref = maxsim_scores(v.double(), vm, t.double(), tm, "mean", "both", backend="torch")
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling, direction", [("mean", "both"), ("lse", "text"), ("weighted", "both")])
def test_backward_bf16_matches_torch(pooling, direction):
    v, vm, t, tm, tw, vw = _cuda_inputs(33, 50, 70, 32, 256)
    upstream = torch.randn(33, 70, device="cuda")
    grads = []
    for backend, dtype in (("triton", torch.bfloat16), ("torch", torch.float32)):
        leaves = [x.to(dtype).clone().requires_grad_() for x in (v, t, tw, vw)]
        kw = dict(text_weights=leaves[2], visual_weights=leaves[3]) if pooling == "weighted" else {}
        out = maxsim_scores(leaves[0], vm, leaves[1], tm, pooling, direction, 0.1, backend=backend, **kw)
        (out.float() * upstream).sum().backward()
        grads.append([None if x.grad is None else x.grad.float() for x in leaves])
    for g, r in zip(*grads):
        assert (g is None) == (r is None)
        if r is not None:
            assert (g - r).norm() <= 1e-2 * r.norm()


def test_sinkhorn_bf16_matches_torch_solver():
    v, vm, t, tm, tw, vw = _cuda_inputs(17, 50, 70, 32, 512)
    vp = torch.nn.functional.normalize(v.float().mean(1), dim=-1)
    tp = torch.nn.functional.normalize(t.float().mean(1), dim=-1)
    for options in (
        dict(),
        dict(log_visual=vw.log(), log_text=tw.log(), epsilon=0.05, rows="text"),
        dict(visual_pooled=vp, text_pooled=tp, epsilon=0.05, iterations=50),  # TokenFlow's defaults
    ):
        ref = sinkhorn_flow_scores(v.float(), vm, t.float(), tm, backend="torch", **options)
        for domain in ("log", "scaling"):
            got = sinkhorn_flow_scores(v, vm, t, tm, backend="triton", domain=domain, **options)
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_sinkhorn_backward_bf16_matches_torch_solver():
    v, vm, t, tm, _, _ = _cuda_inputs(9, 50, 40, 32, 256)
    upstream = torch.randn(9, 40, device="cuda")
    grads = []
    for backend, dtype in (("triton", torch.bfloat16), ("torch", torch.float32)):
        leaves = [x.to(dtype).clone().requires_grad_() for x in (v, t)]
        pooled = [torch.nn.functional.normalize(x.float().mean(1), dim=-1).requires_grad_() for x in leaves]
        out = sinkhorn_flow_scores(
            leaves[0],
            vm,
            leaves[1],
            tm,
            visual_pooled=pooled[0],
            text_pooled=pooled[1],
            epsilon=0.05,
            iterations=20,
            backend=backend,
        )
        (out.float() * upstream).sum().backward()
        grads.append([x.grad.float() for x in leaves])
    for g, r in zip(*grads):
        assert (g - r).norm() <= 2e-2 * r.norm()


def test_pair_kernels_equal_the_full_kernels():
    v, vm, t, tm, _, _ = _cuda_inputs(40, 50, 200, 32, 512)
    gen = torch.Generator().manual_seed(1)
    pairs = torch.stack([torch.randint(0, 40, (999,), generator=gen), torch.randint(0, 200, (999,), generator=gen)], 1)
    pairs = pairs.cuda()
    for pooling, direction in (("mean", "text"), ("lse", "both")):
        full = maxsim_scores(v, vm, t, tm, pooling, direction, 0.1, backend="triton")
        got = maxsim_scores(v, vm, t, tm, pooling, direction, 0.1, backend="triton", pairs=pairs)
        torch.testing.assert_close(got, full[pairs[:, 0], pairs[:, 1]], atol=1e-5, rtol=1e-5)
    for domain in ("log", "scaling"):
        full = sinkhorn_flow_scores(v, vm, t, tm, backend="triton", iterations=10, domain=domain)
        got = sinkhorn_flow_scores(v, vm, t, tm, backend="triton", iterations=10, domain=domain, pairs=pairs)
        torch.testing.assert_close(got, full[pairs[:, 0], pairs[:, 1]], atol=1e-5, rtol=1e-5)


def test_mean_max_auto_backend_uses_the_kernel_and_agrees():
    v, vm, t, tm, _, _ = _cuda_inputs(40, 50, 120, 32, 512)
    visual, text = TokenBatch(v, vm), TokenBatch(t, tm)
    fused = create_aligner("mean_max", direction="both")(visual, text)
    plain = create_aligner("mean_max", direction="both", backend="torch")(visual, text)
    assert fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused.float(), plain.float(), atol=1e-2, rtol=1e-2)
