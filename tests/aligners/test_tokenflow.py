import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from finealign.errors import ConfigError
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch
from tests.aligners.reference import pairwise, real_tokens
from tests.conftest import random_batch


def global_vector(batch: TokenBatch, i: int) -> torch.Tensor:
    """The item's pooled vector, or the plain mean of its real raw tokens; normalised."""
    vec = batch.pooled[i].double() if batch.pooled is not None else real_tokens(batch, i, normalize=False).mean(0)
    return F.normalize(vec, dim=0)


def marginal(tokens: torch.Tensor, other_global: torch.Tensor, kind: str, temperature: float) -> np.ndarray:
    """Token masses over real tokens only: uniform, or softmax of similarity to the other side's global."""
    if kind == "uniform":
        return np.full(len(tokens), 1.0 / len(tokens))
    return torch.softmax(tokens @ other_global / temperature, 0).numpy()


def pair_problem(v, t, i, j, kind="importance", temperature=0.1):
    """(S, a, b) of pair (i, j) on real tokens only."""
    vt, tt = real_tokens(v, i), real_tokens(t, j)
    a = marginal(vt, global_vector(t, j), kind, temperature)
    b = marginal(tt, global_vector(v, i), kind, temperature)
    return (vt @ tt.T).numpy(), a, b


def pot_score(v, t, i, j, eps, iterations, kind="importance", temperature=0.1) -> float:
    """Σ P·S with P from POT's log-domain Sinkhorn (transposed so its update order matches ours)."""
    sim, a, b = pair_problem(v, t, i, j, kind, temperature)
    plan_t = ot.sinkhorn(b, a, (1 - sim).T, eps, method="sinkhorn_log", numItermax=iterations, stopThr=0.0, warn=False)
    return float((plan_t.T * sim).sum())


def emd_score(v, t, i, j, kind) -> float:
    sim, a, b = pair_problem(v, t, i, j, kind)
    return float((ot.emd(a, b, 1 - sim) * sim).sum())


@pytest.mark.parametrize("marginals", ["importance", "uniform"])
def test_tokenflow_matches_pot_fp32(marginals, gen):
    v = random_batch(5, 6, 8, generator=gen)
    t = random_batch(8, 5, 8, generator=gen)
    ref = pairwise(v, t, lambda i, j: pot_score(v, t, i, j, 0.1, 30, marginals))
    # One block, blocks that divide N (5 = 5·1, 8 = 2·4) and blocks that do not.
    for chunks in [(16, 64), (1, 4), (2, 3)]:
        aligner = create_aligner(
            "tokenflow",
            marginals=marginals,
            epsilon=0.1,
            iterations=30,
            tolerance=0,
            chunk_visual=chunks[0],
            chunk_text=chunks[1],
        )
        got = aligner(v, t)
        assert got.shape == (5, 8) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), ref, atol=2e-5, rtol=1e-5, msg=lambda m: f"chunks {chunks}: {m}")


def test_tokenflow_without_pooled_uses_masked_mean(gen):
    v = random_batch(4, 6, 8, generator=gen, pooled=False)
    t = random_batch(5, 5, 8, generator=gen, pooled=False)
    got = create_aligner("tokenflow", epsilon=0.1, iterations=20, tolerance=0, marginal_temperature=0.5)(v, t)
    ref = pairwise(v, t, lambda i, j: pot_score(v, t, i, j, 0.1, 20, "importance", 0.5))
    torch.testing.assert_close(got.double(), ref, atol=2e-5, rtol=1e-5)


def test_tokenflow_bf16_close_to_reference(gen):
    v = random_batch(4, 6, 16, generator=gen)
    t = random_batch(6, 5, 16, generator=gen)
    aligner = create_aligner("tokenflow", epsilon=0.1, iterations=30, tolerance=0, chunk_visual=3, chunk_text=4)
    got = aligner(v.to(torch.bfloat16), t.to(torch.bfloat16))
    ref = pairwise(v, t, lambda i, j: pot_score(v, t, i, j, 0.1, 30))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), ref, atol=4e-2, rtol=4e-2)


@pytest.mark.parametrize("marginals", ["importance", "uniform"])
def test_tokenflow_small_epsilon_approaches_emd(marginals, gen):
    v = random_batch(3, 5, 8, generator=gen, dtype=torch.float64)
    t = random_batch(4, 4, 8, generator=gen, dtype=torch.float64)
    eps = 2e-3
    got = create_aligner("tokenflow", marginals=marginals, epsilon=eps, iterations=3000)(v, t)
    ref = pairwise(v, t, lambda i, j: emd_score(v, t, i, j, marginals))
    # Entropic OT is within ε·(log Lv + log Lt) of exact OT.
    torch.testing.assert_close(got, ref, atol=eps * np.log(5 * 4), rtol=0)


def test_tokenflow_tiny_epsilon_has_no_nan(gen):
    v = random_batch(3, 6, 8, generator=gen)
    t = random_batch(4, 5, 8, generator=gen)
    v.tokens.requires_grad_(True)
    scores = create_aligner("tokenflow", epsilon=1e-4, iterations=100)(v, t)
    assert bool(torch.isfinite(scores).all())
    scores.sum().backward()
    assert bool(torch.isfinite(v.tokens.grad).all())


def test_tokenflow_explain_flow_has_the_marginals(gen):
    v = random_batch(1, 7, 8, generator=gen)
    t = random_batch(1, 6, 8, generator=gen, min_len=2)
    aligner = create_aligner("tokenflow", epsilon=0.05, iterations=400)
    expl = aligner.explain(v, t)
    sim, a, b = pair_problem(v, t, 0, 0)
    assert expl.weights.shape == (len(b), len(a))  # (real words, real regions)
    torch.testing.assert_close(expl.weights.sum(1).double(), torch.from_numpy(b), atol=1e-6, rtol=0)
    torch.testing.assert_close(expl.weights.sum(0).double(), torch.from_numpy(a), atol=1e-4, rtol=0)
    assert expl.score == pytest.approx(float(aligner(v, t)[0, 0]), abs=1e-6)
    assert expl.score == pytest.approx(float((expl.weights.double().numpy() * sim.T).sum()), abs=1e-5)
    assert torch.equal(expl.word_to_region, expl.weights.argmax(1))


def test_tokenflow_score_pairs_equals_matrix_entries(gen):
    v = random_batch(5, 6, 8, generator=gen)
    t = random_batch(7, 5, 8, generator=gen)
    aligner = create_aligner("tokenflow", chunk_pairs=3)
    pairs = torch.tensor([[0, 0], [4, 6], [2, 3], [2, 1], [1, 5], [3, 3], [0, 6]])
    full = aligner(v, t)
    torch.testing.assert_close(aligner.score_pairs(v, t, pairs), full[pairs[:, 0], pairs[:, 1]], atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunks", [(16, 64), (2, 3)])
def test_tokenflow_one_sided_uniform_reduces_to_mean_max(chunks, gen):
    """The subsumption claim: word mass to its best region as ε → 0 is exactly mean-max."""
    v = random_batch(6, 7, 8, generator=gen)
    t = random_batch(9, 5, 8, generator=gen)
    flow = create_aligner(
        "tokenflow", relax_visual=True, marginals="uniform", epsilon=1e-6, chunk_visual=chunks[0], chunk_text=chunks[1]
    )
    torch.testing.assert_close(flow(v, t), create_aligner("mean_max")(v, t), atol=1e-5, rtol=0)


def test_tokenflow_one_sided_importance_is_weighted_mean_max(gen):
    v = random_batch(4, 6, 8, generator=gen)
    t = random_batch(5, 5, 8, generator=gen)
    got = create_aligner("tokenflow", relax_visual=True, epsilon=1e-6, marginal_temperature=0.3)(v, t)

    def weighted_max(i, j):
        sim, _, b = pair_problem(v, t, i, j, "importance", 0.3)
        return float((b * sim.max(0)).sum())

    torch.testing.assert_close(got.double(), pairwise(v, t, weighted_max), atol=1e-5, rtol=0)


@pytest.mark.parametrize("relax_visual", [False, True])
def test_tokenflow_gradcheck(relax_visual, gen):
    v = random_batch(2, 3, 3, generator=gen, dtype=torch.float64)
    t = random_batch(2, 3, 3, generator=gen, dtype=torch.float64)
    tensors = (v.tokens, t.tokens, v.pooled, t.pooled)
    for x in tensors:
        x.requires_grad_(True)
    aligner = create_aligner("tokenflow", epsilon=0.2, iterations=5, relax_visual=relax_visual, chunk_visual=1)

    def fn(vt, tt, vp, tp):
        return aligner(TokenBatch(vt, v.mask, vp), TokenBatch(tt, t.mask, tp))

    assert torch.autograd.gradcheck(fn, tensors, fast_mode=True)


def test_tokenflow_checkpointing_keeps_scores_and_gradients(gen, monkeypatch):
    """checkpoint=True recomputes each block's Sinkhorn in backward: same scores and gradients
    (over several blocks), and the recompute really happens (one more forward per block)."""
    visual, text = random_batch(5, 4, 6, generator=gen), random_batch(7, 3, 6, generator=gen)
    results, calls = {}, []
    for ckpt in (False, True):
        aligner = create_aligner(
            "tokenflow", iterations=6, chunk_visual=2, chunk_text=4, checkpoint=ckpt, gradient="unrolled"
        ).train()
        original = aligner._block_scores
        monkeypatch.setattr(aligner, "_block_scores", lambda v, t, f=original: calls.append(ckpt) or f(v, t))
        leaves = [x.clone().requires_grad_() for x in (visual.tokens, visual.pooled, text.tokens, text.pooled)]
        scores = aligner(TokenBatch(leaves[0], visual.mask, leaves[1]), TokenBatch(leaves[2], text.mask, leaves[3]))
        (scores * torch.arange(35.0).reshape(5, 7)).sum().backward()
        results[ckpt] = (scores.detach(), [x.grad for x in leaves])
    blocks = 3 * 2
    assert calls.count(False) == blocks and calls.count(True) == 2 * blocks
    torch.testing.assert_close(results[True][0], results[False][0])
    for a, b in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "options",
    [
        {"epsilon": 0},
        {"epsilon": -1.0},
        {"epsilon": float("nan")},
        {"iterations": 0},
        {"iterations": 2.5},
        {"marginals": "entropy"},
        {"marginal_temperature": 0.0},
        {"relax_visual": "yes"},
        {"checkpoint": 1},
        {"chunk_pairs": 0},
    ],
)
def test_tokenflow_bad_config_raises(options):
    with pytest.raises(ConfigError):
        create_aligner("tokenflow", **options)


def test_tokenflow_without_pooled_ignores_poisoned_padding(gen):
    # The masked-mean global vector must not read padded tokens either (NaN there is allowed).
    v = random_batch(3, 6, 8, generator=gen, pooled=False, min_len=2, dtype=torch.float64)
    t = random_batch(4, 5, 8, generator=gen, pooled=False, min_len=2, dtype=torch.float64)
    aligner = create_aligner("tokenflow", epsilon=0.1, iterations=10)
    clean = aligner(v, t)
    pv = v.tokens.masked_fill(~v.mask[..., None], float("nan")).requires_grad_(True)
    poisoned = aligner(TokenBatch(pv, v.mask), t)
    torch.testing.assert_close(poisoned, clean)
    poisoned.sum().backward()
    assert bool(torch.isfinite(pv.grad).all()) and bool((pv.grad[~v.mask] == 0).all())


def test_tokenflow_records_whether_it_converged(gen):
    v = random_batch(3, 6, 8, generator=gen)
    t = random_batch(4, 5, 8, generator=gen)
    capped = create_aligner("tokenflow", epsilon=0.02, iterations=2)
    capped(v, t)
    report = capped.diagnostics()
    assert report["converged"] == 0.0 and report["iterations"] == 2.0 and report["marginal_error"] > 1e-3
    converged = create_aligner("tokenflow", epsilon=0.1, iterations=2000)
    converged(v, t)
    report = converged.diagnostics()
    assert report["converged"] == 1.0 and report["marginal_error"] <= 1e-3
    converged.reset_diagnostics()
    assert converged.diagnostics() == {}


def test_tokenflow_scores_do_not_depend_on_the_other_pairs_of_a_block(gen):
    v = random_batch(5, 6, 8, generator=gen)
    t = random_batch(7, 5, 8, generator=gen)
    whole = create_aligner("tokenflow", epsilon=0.05)(v, t)
    one_by_one = create_aligner("tokenflow", epsilon=0.05, chunk_visual=1, chunk_text=1)(v, t)
    torch.testing.assert_close(one_by_one, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("domain", ["log", "scaling"])
def test_tokenflow_solver_domains_agree(domain, gen):
    v = random_batch(3, 6, 8, generator=gen)
    t = random_batch(4, 5, 8, generator=gen)
    ref = pairwise(v, t, lambda i, j: pot_score(v, t, i, j, 0.05, 40))
    got = create_aligner("tokenflow", epsilon=0.05, iterations=40, tolerance=0, solver_domain=domain)(v, t)
    torch.testing.assert_close(got.double(), ref, atol=2e-5, rtol=1e-5)


def test_tokenflow_triton_backend_needs_fixed_iterations():
    with pytest.raises(ConfigError, match="tolerance"):
        create_aligner("tokenflow", backend="triton")
    create_aligner("tokenflow", backend="triton", tolerance=0)


def test_tokenflow_newton_solver_equals_the_plain_solver_when_converged(gen):
    """The default solver (sweeps + Newton, captions packed into prefixes) and the plain Sinkhorn
    iterates (`acceleration: none`) give the same converged scores, matrix and listed pairs, and
    both meet the tolerance; float64, padded tokens at random positions."""
    v = random_batch(5, 7, 8, generator=gen, dtype=torch.float64)
    t = random_batch(6, 6, 8, generator=gen, dtype=torch.float64)
    options = dict(epsilon=0.03, tolerance=1e-10, iterations=20_000)
    newton = create_aligner("tokenflow", **options, chunk_visual=2, chunk_text=4)
    plain = create_aligner("tokenflow", **options, acceleration="none")
    got, ref = newton(v, t), plain(v, t)
    torch.testing.assert_close(got, ref, atol=1e-8, rtol=0)
    report = newton.diagnostics()
    assert report["converged"] == 1.0 and report["iterations"] < plain.diagnostics()["iterations"] / 5
    pairs = torch.tensor([[0, 5], [4, 1], [2, 2]])
    torch.testing.assert_close(newton.score_pairs(v, t, pairs), ref[pairs[:, 0], pairs[:, 1]], atol=1e-8, rtol=0)


def test_tokenflow_newton_solver_matches_pot_converged(gen):
    v = random_batch(3, 6, 8, generator=gen)
    t = random_batch(4, 5, 8, generator=gen)
    got = create_aligner("tokenflow", epsilon=0.05, tolerance=1e-6)(v, t)
    ref = pairwise(v, t, lambda i, j: pot_score(v, t, i, j, 0.05, 400))
    torch.testing.assert_close(got.double(), ref, atol=2e-5, rtol=0)


def test_tokenflow_unknown_acceleration_is_named():
    with pytest.raises(ConfigError, match="acceleration"):
        create_aligner("tokenflow", acceleration="anderson")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tokenflow_newton_solver_half_precision_close_to_fp32(dtype, gen):
    """Half-precision tokens: the products in the input dtype, the solver in fp32, the scores
    returned in the input dtype, within bf16's documented tolerance of the fp32 scores."""
    v = random_batch(4, 6, 16, generator=gen)
    t = random_batch(6, 5, 16, generator=gen)
    aligner = create_aligner("tokenflow", epsilon=0.1)
    got = aligner(v.to(dtype), t.to(dtype))
    assert got.dtype == dtype and aligner.diagnostics()["converged"] == 1.0
    torch.testing.assert_close(got.double(), aligner(v, t).double(), atol=4e-2, rtol=4e-2)
