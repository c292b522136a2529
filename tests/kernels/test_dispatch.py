"""Backend choice, bad-input errors, and the mean_max aligner's `backend` option."""

from __future__ import annotations

import pytest
import torch

from finealign.errors import ConfigError, ShapeError
from finealign.kernels import SinkhornOptions, maxsim_scores, sinkhorn_flow_scores, use_triton
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch
from tests.conftest import random_batch
from tests.kernels.inputs import tokens

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def test_auto_uses_torch_for_cpu_and_float64():
    assert not use_triton("auto", torch.zeros(1))  # CPU tensors: torch, even when interpreting
    assert not use_triton("torch", torch.zeros(1))
    with pytest.raises(ConfigError, match="backend must be one of"):
        use_triton("cuda", torch.zeros(1))
    with pytest.raises(ConfigError, match="supports"):
        use_triton("triton", torch.zeros(1, dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(pooling="max"), ConfigError, "pooling must be one of"),
        (dict(direction="left"), ConfigError, "direction must be one of"),
        (dict(temperature=0.0), ConfigError, "temperature must be a finite number > 0"),
        (dict(pooling="weighted"), ShapeError, "needs text_weights"),
        (
            dict(pooling="weighted", direction="visual", visual_weights=torch.ones(3)),
            ShapeError,
            "visual_weights must be",
        ),
    ],
)
def test_bad_options_raise_named_errors(kwargs, error, match, gen):
    v, vm = tokens(2, 3, 4, gen)
    t, tm = tokens(2, 3, 4, gen)
    with pytest.raises(error, match=match):
        maxsim_scores(v, vm, t, tm, **kwargs)


def test_sinkhorn_options_object_and_keywords_agree_and_are_checked(gen):
    v, vm = tokens(2, 3, 4, gen)
    t, tm = tokens(3, 5, 4, gen)
    opts = SinkhornOptions(epsilon=0.2, iterations=7, rows="text")
    by_object = sinkhorn_flow_scores(v, vm, t, tm, options=opts)
    by_keywords = sinkhorn_flow_scores(v, vm, t, tm, epsilon=0.2, iterations=7, rows="text")
    torch.testing.assert_close(by_object, by_keywords, rtol=0, atol=0)
    assert not torch.allclose(by_object, sinkhorn_flow_scores(v, vm, t, tm, options=opts, iterations=1))
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['epsilom'\]"):
        sinkhorn_flow_scores(v, vm, t, tm, epsilom=0.2)
    with pytest.raises(ConfigError, match="iterations must be a positive int, got 0"):
        SinkhornOptions(iterations=0)
    with pytest.raises(ConfigError, match="rows must be one of visual, text"):
        sinkhorn_flow_scores(v, vm, t, tm, rows="cols")


def test_bad_shapes_raise_shape_error(gen):
    v, vm = tokens(2, 3, 4, gen)
    t, tm = tokens(2, 3, 5, gen)
    with pytest.raises(ShapeError, match="token dims differ"):
        maxsim_scores(v, vm, t, tm)
    with pytest.raises(ShapeError, match="visual mask must be bool"):
        maxsim_scores(v, vm.float(), v, vm)
    with pytest.raises(ShapeError, match="log_text must be"):
        sinkhorn_flow_scores(v, vm, v, vm, log_text=torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="epsilon"):
        sinkhorn_flow_scores(v, vm, v, vm, epsilon=0)


def test_fused_sinkhorn_pairs_refuse_autograd(gen):
    """The full-matrix Sinkhorn kernel has a backward; its pair form does not, and says so."""
    v, vm = tokens(2, 3, 16, gen)
    v.requires_grad_()
    pairs = torch.tensor([[0, 1]])
    with pytest.raises(ConfigError, match="forward-only"):
        sinkhorn_flow_scores(v, vm, v, vm, backend="triton", pairs=pairs)
    assert sinkhorn_flow_scores(v, vm, v, vm, backend="auto", pairs=pairs).requires_grad  # torch solver instead
    assert sinkhorn_flow_scores(v, vm, v, vm, backend="triton").requires_grad


def test_mean_max_aligner_backends_agree(gen):
    v = random_batch(5, 7, 16, generator=gen)
    t = random_batch(6, 4, 16, generator=gen)
    for direction in ("text", "both"):
        fused = create_aligner("mean_max", direction=direction, backend="triton")(v, t)
        plain = create_aligner("mean_max", direction=direction, backend="torch")(v, t)
        assert fused.dtype == plain.dtype == torch.float32
        torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


def test_mean_max_rejects_unknown_backend():
    with pytest.raises(ConfigError, match="backend must be one of"):
        create_aligner("mean_max", backend="cuda")


@pytest.mark.parametrize(
    "options",
    [{"pooling": "lse", "temperature": 0.1}, {"pooling": "mean", "direction": "both"}, {"direction": "visual"}],
)
def test_hard_aligner_backends_agree(options, gen):
    v = random_batch(4, 7, 16, generator=gen)
    t = random_batch(5, 4, 16, generator=gen)
    fused = create_aligner("hard", backend="triton", **options)(v, t)
    plain = create_aligner("hard", backend="torch", **options)(v, t)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [{}, {"marginals": "uniform"}, {"relax_visual": True, "epsilon": 0.02}])
def test_tokenflow_aligner_backends_agree_with_gradients(options, gen):
    """Fused Sinkhorn forward and backward through the aligner (normalisation, importance
    marginals from the pooled vectors) equal the torch solver's scores and gradients."""
    v = random_batch(3, 6, 8, generator=gen)
    t = random_batch(4, 5, 8, generator=gen)
    plain = create_aligner("tokenflow", backend="torch", iterations=20, tolerance=0, **options)
    fused = create_aligner("tokenflow", backend="triton", iterations=20, tolerance=0, **options)
    with torch.no_grad():
        torch.testing.assert_close(fused(v, t), plain(v, t), atol=1e-5, rtol=1e-5)
    grads = []
    for aligner in (fused, plain):
        leaves = [x.clone().requires_grad_() for x in (v.tokens, v.pooled, t.tokens, t.pooled)]
        out = aligner.train()(TokenBatch(leaves[0], v.mask, leaves[1]), TokenBatch(leaves[2], t.mask, leaves[3]))
        (out * torch.arange(12.0).reshape(3, 4)).sum().backward()
        grads.append([x.grad for x in leaves])
    for got, ref in zip(*grads):
        # A pooled vector the marginals do not use (uniform; one-sided drops a side) gets no
        # gradient from torch and an exact zero from the kernel.
        if ref is None and got is not None:
            ref = torch.zeros_like(got)
        assert got is not None or ref is None
        if ref is not None:
            # fp32 on both sides, and 1/ε = 50 amplifies rounding in the small-ε case
            torch.testing.assert_close(got, ref, atol=1e-4 * float(ref.abs().max()), rtol=0)


@pytest.mark.parametrize("direction", ["text", "visual", "both"])
def test_weighted_mean_max_backends_agree_with_weight_gradients(direction, gen):
    v = random_batch(3, 6, 8, generator=gen)
    t = random_batch(4, 5, 8, generator=gen)
    torch.manual_seed(0)
    fused = create_aligner("weighted_mean_max", dim=8, direction=direction, backend="triton")
    plain = create_aligner("weighted_mean_max", dim=8, direction=direction, backend="torch")
    for layer in (fused.text_weight, fused.visual_weight):
        if layer is not None:
            torch.nn.init.normal_(layer.weight)  # non-uniform weights, so pooling really is weighted
    plain.load_state_dict(fused.state_dict())
    out_fused, out_plain = fused(v, t), plain(v, t)
    torch.testing.assert_close(out_fused, out_plain, atol=1e-5, rtol=1e-5)
    out_fused.sum().backward()
    out_plain.sum().backward()
    for (name, a), b in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "fields, name",
    [
        ((3, 4, 64, 8, 3), "items_visual"),
        ((2, 6, 64, 8, 3), "items_text"),
        ((2, 4, 8, 8, 3), "block_k"),
        ((2, 4, 64, 6, 3), "num_warps"),
        ((2, 4, 64, 8, 0), "num_stages"),
    ],
)
def test_bad_tiles_are_named(fields, name):
    from finealign.kernels import Tiles

    with pytest.raises(ConfigError, match=f"Tiles.{name} ="):
        Tiles(*fields)
    assert Tiles(5, 4, 64, 8, 3, packed=True).items_visual == 5  # packed tiles take any image count


def test_sinkhorn_options_are_checked_when_built_and_flattened_only_for_the_custom_ops():
    import dataclasses
    import math

    from finealign.kernels.sinkhorn_options import SinkhornLaunch

    opts = SinkhornOptions(epsilon=0.05, iterations=7, rows="text", one_sided=True, captions_per_program=2,
                           domain="scaling", absorb_every=3)  # fmt: skip
    launch = SinkhornLaunch.of(opts, importance=True, scaling=True)
    assert launch.op_args() == (0.05, 0.1, 7, True, True, True, True, 3, 2, 0)
    assert SinkhornLaunch.from_op_args(*launch.op_args()) == launch
    # every custom op takes the launch's scalars by the launch's field names, in its order
    fields = [f.name for f in dataclasses.fields(SinkhornLaunch)]
    ops = torch.ops.finealign
    for op, first in (
        (ops.sinkhorn_forward, "pairs"),
        (ops.sinkhorn_forward_saving, "tp"),
        (ops.sinkhorn_backward, "saved"),
    ):
        names = [a.name for a in op.default._schema.arguments]
        start = names.index(first) + 1
        assert names[start : start + len(fields)] == fields, op
    for bad, message in (
        (dict(epsilon=0), "epsilon must be a finite number > 0"),
        (dict(epsilon=math.nan), "epsilon must be a finite number > 0"),
        (dict(epsilon=True), "epsilon must be a finite number > 0, got True"),
        (dict(marginal_temperature=-1.0), "marginal_temperature"),
        (dict(one_sided="no"), "one_sided must be true or false"),
        (dict(backend="cuda"), "backend must be one of"),
        (dict(num_warps=0), "num_warps must be a positive int or null"),
        (dict(domain="exp"), "domain must be one of log, scaling"),
    ):
        with pytest.raises(ConfigError, match=message):
            SinkhornOptions(**bad)
