"""The fused Sinkhorn kernel (Triton; CPU interpreter here) equals the torch solver
(finealign.kernels.sinkhorn) iteration for iteration, and POT's converged plan."""

from __future__ import annotations

import pytest
import torch

from finealign.kernels import sinkhorn_flow_scores
from tests.kernels.inputs import one_real_token, pooled, token_weights, tokens

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _inputs(gen, nv=3, lv=6, nt=5, lt=4, d=12):
    v, vm = tokens(nv, lv, d, gen)
    t, tm = tokens(nt, lt, d, gen)
    return v, vm, t, tm


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(iterations=1),
        dict(rows="text"),
        dict(one_sided=True),
        dict(one_sided=True, rows="text"),
        dict(marginals=True),
        dict(epsilon=0.02, iterations=7),
    ],
    ids=["uniform", "one-iteration", "text-rows", "one-sided", "one-sided-text", "given-marginals", "small-eps"],
)
@pytest.mark.parametrize("domain", ["log", "scaling"])
def test_triton_equals_torch_solver(options, domain, gen):
    v, vm, t, tm = _inputs(gen)
    options = dict(options)
    if options.pop("marginals", False):
        options.update(log_visual=token_weights(vm, gen).log(), log_text=token_weights(tm, gen).log())
    # absorb_every=3 puts absorptions inside the 7-iteration runs too.
    got = sinkhorn_flow_scores(v, vm, t, tm, backend="triton", domain=domain, absorb_every=3, **options)
    ref = sinkhorn_flow_scores(v.double(), vm, t.double(), tm, backend="torch", **options)
    assert got.shape == (3, 5) and got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_converged_flow_matches_pot(backend, gen):
    ot = pytest.importorskip("ot")
    v, vm, t, tm = _inputs(gen, 2, 5, 3, 7, 8)
    a_w, b_w = token_weights(vm, gen), token_weights(tm, gen)
    eps = 0.25  # large enough to converge in few iterations (the interpreter is slow)
    got = sinkhorn_flow_scores(
        v, vm, t, tm, log_visual=a_w.log(), log_text=b_w.log(), epsilon=eps, iterations=50, backend=backend
    )
    for i in range(2):
        for j in range(3):
            sim = v[i][vm[i]].double() @ t[j][tm[j]].double().T
            plan = ot.sinkhorn(
                a_w[i][vm[i]].numpy(),
                b_w[j][tm[j]].numpy(),
                (1 - sim).numpy(),
                eps,
                method="sinkhorn_log",
                numItermax=5000,
                stopThr=1e-13,
            )
            assert abs(float(got[i, j]) - float((torch.from_numpy(plan) * sim).sum())) < 1e-5


def test_awkward_sizes_and_single_tokens(gen):
    for v, vm, t, tm in (
        _inputs(gen, 1, 1, 1, 1, 16),
        _inputs(gen, 2, 20, 7, 3, 40),
        (*one_real_token(3, 5, 8, gen), *one_real_token(4, 3, 8, gen)),
    ):
        got = sinkhorn_flow_scores(v, vm, t, tm, backend="triton", iterations=5)
        ref = sinkhorn_flow_scores(v.double(), vm, t.double(), tm, backend="torch", iterations=5)
        torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_single_real_token_each_side_flows_all_mass_there(gen):
    v, vm = one_real_token(2, 4, 8, gen)
    t, tm = one_real_token(3, 5, 8, gen)
    got = sinkhorn_flow_scores(v, vm, t, tm, backend="triton", iterations=3)
    ref = torch.stack(
        [torch.stack([v[i][vm[i]][0].double() @ t[j][tm[j]][0].double() for j in range(3)]) for i in range(2)]
    )
    torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("config", [dict(), dict(relax_visual=True), dict(marginals="uniform", epsilon=0.2)])
def test_equals_the_tokenflow_aligner(config, backend, gen):
    """Same numbers as aligners/tokenflow.py (importance marginals from the pooled vectors)."""
    from finealign.registry import create_aligner
    from tests.conftest import random_batch

    aligner = create_aligner("tokenflow", iterations=6, tolerance=0, **config)
    cfg = aligner.config
    visual = random_batch(3, 6, 16, generator=gen)
    text = random_batch(4, 5, 16, generator=gen, pooled=False)  # the aligner fills in the token mean
    expected = aligner(visual, text)
    pv, pt = aligner.prepare(visual), aligner.prepare(text)
    marginals = (
        dict(visual_pooled=pv.pooled, text_pooled=pt.pooled, marginal_temperature=cfg.marginal_temperature)
        if cfg.marginals == "importance"
        else {}
    )
    got = sinkhorn_flow_scores(
        pv.tokens,
        pv.mask,
        pt.tokens,
        pt.mask,
        epsilon=cfg.epsilon,
        iterations=cfg.iterations,
        one_sided=cfg.relax_visual,
        backend=backend,
        **marginals,
    )
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_importance_marginals_need_both_pooled_vectors(gen):
    from finealign.errors import ShapeError

    v, vm, t, tm = _inputs(gen)
    with pytest.raises(ShapeError, match="both visual_pooled and text_pooled"):
        sinkhorn_flow_scores(v, vm, t, tm, visual_pooled=v[:, 0])


@pytest.mark.parametrize("rows", ["visual", "text"])
def test_scaling_domain_hands_underflowing_pairs_to_the_log_domain(rows, gen, monkeypatch):
    """At ε far below the similarity spread, exp(−C/ε) sums underflow in the scaling domain: the
    kernel flags those pairs and they are redone in the log domain — same scores as torch's, and
    the flagged pairs really went through the fallback (at the larger ε, none do)."""
    import finealign.kernels.sinkhorn_triton as fused

    calls = []
    original = fused.sinkhorn_triton

    def spy(v, vmask, t, tmask, options, **kwargs):  # the options travel whole, as one object
        calls.append((options.domain, None if kwargs.get("pairs") is None else len(kwargs["pairs"])))
        return original(v, vmask, t, tmask, options, **kwargs)

    monkeypatch.setattr(fused, "sinkhorn_triton", spy)
    v, vm, t, tm = _inputs(gen, 3, 9, 4, 6)
    for epsilon, fallback in ((0.1, False), (0.003, True)):
        calls.clear()
        got = sinkhorn_flow_scores(
            v, vm, t, tm, backend="triton", domain="scaling", epsilon=epsilon, iterations=6, rows=rows
        )
        ref = sinkhorn_flow_scores(
            v.double(), vm, t.double(), tm, backend="torch", epsilon=epsilon, iterations=6, rows=rows
        )
        torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
        redone = [n for domain, n in calls if domain == "log"]
        assert calls[0] == ("scaling", None)
        assert (len(redone) == 1 and 0 < redone[0] < 12) if fallback else not redone


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(domain="exp"), "domain must be one of"),
        (dict(absorb_every=0), "absorb_every must be a positive int"),
    ],
)
def test_bad_kernel_options_are_named(options, message, gen):
    from finealign.errors import ConfigError

    v, vm, t, tm = _inputs(gen)
    with pytest.raises(ConfigError, match=message):
        sinkhorn_flow_scores(v, vm, t, tm, **options)


def _sinkhorn_grads(backend, dtype, v, vm, t, tm, upstream, options):
    """Gradients of Σ upstream ⊙ scores w.r.t. every input that can carry one."""
    leaves = {"v": v.to(dtype).clone().requires_grad_(), "t": t.to(dtype).clone().requires_grad_()}
    kw = {k: x for k, x in options.items() if k not in ("importance", "marginals")}
    if options.get("importance"):
        leaves["vp"] = pooled(v.double(), vm).to(dtype).clone().requires_grad_()
        leaves["tp"] = pooled(t.double(), tm).to(dtype).clone().requires_grad_()
        kw.update(visual_pooled=leaves["vp"], text_pooled=leaves["tp"])
    if options.get("marginals") is not None:
        la, lb = options["marginals"]
        leaves["la"], leaves["lb"] = la.to(dtype).clone().requires_grad_(), lb.to(dtype).clone().requires_grad_()
        kw.update(log_visual=leaves["la"], log_text=leaves["lb"])
    out = sinkhorn_flow_scores(leaves["v"], vm, leaves["t"], tm, backend=backend, **kw)
    (out.double() * upstream).sum().backward()
    return out, {k: x.grad for k, x in leaves.items()}


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(rows="text"),
        dict(one_sided=True),
        dict(one_sided=True, rows="text"),
        dict(importance=True),
        dict(importance=True, rows="text", captions_per_program=2),
        dict(marginals=True),
        dict(epsilon=0.03),
    ],
    ids=[
        "uniform",
        "text-rows",
        "one-sided",
        "one-sided-text",
        "importance",
        "importance-text-rows-2-captions",
        "given-marginals",
        "small-eps",
    ],
)
def test_fused_backward_equals_torch_autograd(options, gen):
    """The backward kernel (reverse mode through the saved iterates) gives the unrolled torch
    solver's float64 gradients for tokens, pooled vectors and log marginals."""
    v, vm, t, tm = _inputs(gen, 3, 6, 5, 4, 12)
    options = dict(options, iterations=4)
    if options.pop("marginals", False):
        options["marginals"] = (token_weights(vm, gen).log(), token_weights(tm, gen).log())
    upstream = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    out, got = _sinkhorn_grads("triton", torch.float32, v, vm, t, tm, upstream, options)
    ref_out, ref = _sinkhorn_grads("torch", torch.float64, v, vm, t, tm, upstream, options)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    assert got.keys() == ref.keys()
    for name in ref:
        scale = float(ref[name].abs().max())
        torch.testing.assert_close(got[name].double(), ref[name], atol=2e-5 * scale, rtol=0, msg=name)


def test_fused_backward_awkward_sizes(gen):
    for v, vm, t, tm in (
        _inputs(gen, 1, 1, 1, 1, 16),
        _inputs(gen, 2, 20, 3, 3, 40),  # 3 words: several captions per program (tl.dot needs 16 columns)
        (*one_real_token(3, 5, 8, gen), *one_real_token(4, 3, 8, gen)),
    ):
        upstream = torch.randn(v.shape[0], t.shape[0], generator=gen, dtype=torch.float64)
        _, got = _sinkhorn_grads("triton", torch.float32, v, vm, t, tm, upstream, dict(iterations=3, importance=True))
        _, ref = _sinkhorn_grads("torch", torch.float64, v, vm, t, tm, upstream, dict(iterations=3, importance=True))
        for name in ref:
            scale = max(float(ref[name].abs().max()), 1e-12)
            torch.testing.assert_close(got[name].double(), ref[name], atol=2e-5 * scale, rtol=0, msg=name)
