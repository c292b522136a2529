"""The fused MaxSim kernel (Triton; CPU interpreter here) and the torch fallback equal a loop
reference, forward and backward, on masked inputs of awkward sizes."""

from __future__ import annotations

import pytest
import torch

from finealign.kernels import Tiles, maxsim_scores
from tests.kernels.inputs import one_real_token, token_weights, tokens
from tests.kernels.reference import maxsim_matrix

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # interpreter: -inf arithmetic off the edge

POOLINGS = ["mean", "weighted", "lse"]
DIRECTIONS = ["text", "visual", "both"]
TAU = 0.07


def _inputs(gen, nv=5, lv=7, nt=6, lt=5, d=20):
    v, vm = tokens(nv, lv, d, gen)
    t, tm = tokens(nt, lt, d, gen)
    return v, vm, t, tm, token_weights(tm, gen), token_weights(vm, gen)


def _weights(pooling, tw, vw, dtype=torch.float32):
    return dict(text_weights=tw.to(dtype), visual_weights=vw.to(dtype)) if pooling == "weighted" else {}


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_forward_matches_loop_reference(pooling, direction, backend, gen):
    v, vm, t, tm, tw, vw = _inputs(gen)
    got = maxsim_scores(v, vm, t, tm, pooling, direction, TAU, backend=backend, **_weights(pooling, tw, vw))
    ref = maxsim_matrix(v, vm, t, tm, pooling, direction, TAU, tw, vw)
    assert got.shape == (5, 6) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 1, 1, 16), (3, 1, 4, 9, 5), (4, 9, 3, 1, 33), (17, 3, 2, 2, 8), (2, 33, 3, 17, 70)],
    ids=["all-one", "Lv=1", "Lt=1", "many-images", "beyond-one-tile"],
)
def test_awkward_sizes(shape, gen):
    nv, lv, nt, lt, d = shape
    v, vm, t, tm, tw, vw = _inputs(gen, nv, lv, nt, lt, d)
    for pooling, direction in (("mean", "both"), ("lse", "text"), ("weighted", "visual")):
        got = maxsim_scores(v, vm, t, tm, pooling, direction, TAU, backend="triton", **_weights(pooling, tw, vw))
        ref = maxsim_matrix(v, vm, t, tm, pooling, direction, TAU, tw, vw)
        torch.testing.assert_close(got.double(), ref, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("tiles", [(5, 2), (3, 4), (1, 8)], ids=["5-images", "3-images", "1-image"])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_packed_tiles_match_loop_reference(pooling, direction, tiles, gen):
    """Packed tiles (the images' regions back to back, forward only) give the same scores; with
    Lv = 7, five images fill 35 of 64 columns and image slots straddle no power-of-two boundary."""
    v, vm, t, tm, tw, vw = _inputs(gen, nv=7, lv=7, nt=9)
    got = maxsim_scores(
        v,
        vm,
        t,
        tm,
        pooling,
        direction,
        TAU,
        backend="triton",
        tiles=Tiles(*tiles, 16, 4, 2, packed=True),
        **_weights(pooling, tw, vw),
    )
    ref = maxsim_matrix(v, vm, t, tm, pooling, direction, TAU, tw, vw)
    torch.testing.assert_close(got.double(), ref, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize(
    "shape",
    [(3, 1, 4, 9, 5), (6, 50, 5, 3, 16), (7, 12, 3, 5, 16), (2, 33, 3, 17, 70)],
    ids=["Lv=1", "Lv=50 (runs of 2)", "Lv=12 (runs of 4)", "beyond-one-tile"],
)
def test_packed_tiles_awkward_sizes_and_gradients(shape, gen):
    nv, lv, nt, lt, d = shape
    v, vm, t, tm, tw, vw = _inputs(gen, nv, lv, nt, lt, d)
    leaf = v.clone().requires_grad_()
    got = maxsim_scores(leaf, vm, t, tm, "lse", "both", TAU, backend="triton", tiles=Tiles(5, 2, 16, 4, 2, packed=True))
    ref_leaf = v.double().clone().requires_grad_()
    ref = maxsim_scores(ref_leaf, vm, t.double(), tm, "lse", "both", TAU, backend="torch")
    torch.testing.assert_close(got.double(), ref, atol=2e-6, rtol=2e-6)
    got.sum().backward()  # the backward recomputes on padded tiles
    ref.sum().backward()
    torch.testing.assert_close(leaf.grad.double(), ref_leaf.grad, atol=1e-5, rtol=1e-5)


def test_all_but_one_token_padded(gen):
    v, vm = one_real_token(4, 6, 12, gen)
    t, tm = one_real_token(3, 9, 12, gen)
    got = maxsim_scores(v, vm, t, tm, "mean", "both", backend="triton")
    # One real token each side: the score is that single cosine.
    ref = torch.stack(
        [torch.stack([v[i][vm[i]][0].double() @ t[j][tm[j]][0].double() for j in range(3)]) for i in range(4)]
    )
    torch.testing.assert_close(got.double(), ref, atol=2e-6, rtol=2e-6)


def _grads(backend, dtype, v, vm, t, tm, tw, vw, pooling, direction, upstream):
    leaves = [x.to(dtype).clone().requires_grad_() for x in (v, t, tw, vw)]
    kw = dict(text_weights=leaves[2], visual_weights=leaves[3]) if pooling == "weighted" else {}
    out = maxsim_scores(leaves[0], vm, leaves[1], tm, pooling, direction, TAU, backend=backend, **kw)
    (out * upstream.to(out.dtype)).sum().backward()
    return [None if x.grad is None else x.grad.double() for x in leaves]


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_backward_matches_torch_autograd_in_float64(pooling, direction, gen):
    v, vm, t, tm, tw, vw = _inputs(gen, 4, 6, 5, 3, 16)
    upstream = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    got = _grads("triton", torch.float32, v, vm, t, tm, tw, vw, pooling, direction, upstream)
    ref = _grads("torch", torch.float64, v, vm, t, tm, tw, vw, pooling, direction, upstream)
    for name, g, r in zip(("visual", "text", "text_weights", "visual_weights"), got, ref):
        assert (g is None) == (r is None), name
        if r is not None:
            assert torch.isfinite(g).all(), name
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5, msg=name)
    # Padded tokens never receive gradient.
    assert got[0][~vm].abs().max() == 0 and got[1][~tm].abs().max() == 0


def test_float64_gradcheck_of_the_torch_path(gen):
    v, vm, t, tm, tw, vw = _inputs(gen, 2, 3, 3, 2, 4)
    v64, t64 = v.double().requires_grad_(), t.double().requires_grad_()
    tw64 = tw.clone().requires_grad_()
    fn = lambda a, b, w: maxsim_scores(a, vm, b, tm, "weighted", "text", backend="torch", text_weights=w)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (v64, t64, tw64))


def test_tied_maxima_split_the_gradient_like_torch_amax(gen):
    v, vm, t, tm, tw, vw = _inputs(gen, 2, 4, 2, 3, 16)
    # Dyadic values: every product and partial sum is exact in float32, so the tie below is exact
    # whatever order a backend (or the BLAS under Triton's interpreter) sums in.
    v, t = (v * 4).round() / 4, (t * 4).round() / 4
    vm[:] = True
    v[:, 2] = v[:, 1]  # regions 1 and 2 are identical: every word's max is tied between them
    upstream = torch.ones(2, 2, dtype=torch.float64)
    got = _grads("triton", torch.float32, v, vm, t, tm, tw, vw, "mean", "text", upstream)[0]
    ref = _grads("torch", torch.float64, v, vm, t, tm, tw, vw, "mean", "text", upstream)[0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_fp32(dtype, gen):
    v, vm, t, tm, _, _ = _inputs(gen, 3, 5, 4, 6, 64)
    ref = maxsim_matrix(v.to(dtype), vm, t.to(dtype), tm, "mean", "both", TAU)  # same rounded inputs
    got = maxsim_scores(v.to(dtype), vm, t.to(dtype), tm, "mean", "both", backend="triton")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=1e-3, rtol=1e-3)
