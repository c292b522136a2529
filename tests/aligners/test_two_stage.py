import itertools

import pytest
import torch
import torch.nn.functional as F

from finealign.errors import ConfigError, UnknownNameError
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch
from tests.aligners.reference import mean_max_pair, real_tokens
from tests.conftest import random_batch


def global_cosines(v: TokenBatch, t: TokenBatch) -> list[list[float]]:
    """Loop cosines of the pooled vectors (plain mean of the real raw tokens when pooled is None)."""

    def vec(batch, i):
        return batch.pooled[i].double() if batch.pooled is not None else real_tokens(batch, i, normalize=False).mean(0)

    return [[float(F.cosine_similarity(vec(v, i), vec(t, j), dim=0)) for j in range(len(t))] for i in range(len(v))]


def reference_two_stage(v, t, top_k, alpha, direction):
    """(global, shortlist set, {pair: mixed}) by loops: top-K per query of `direction`, then
    α·G + (1−α)·mean_max."""
    glob = global_cosines(v, t)
    nv, nt = len(v), len(t)
    shortlist = set()
    if direction == "i2t":
        for i in range(nv):
            shortlist |= {(i, j) for j in sorted(range(nt), key=lambda j: -glob[i][j])[:top_k]}
    else:
        for j in range(nt):
            shortlist |= {(i, j) for i in sorted(range(nv), key=lambda i: -glob[i][j])[:top_k]}
    mixed = {
        (i, j): alpha * glob[i][j] + (1 - alpha) * mean_max_pair(real_tokens(v, i), real_tokens(t, j))
        for (i, j) in shortlist
    }
    return glob, shortlist, mixed


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
@pytest.mark.parametrize("pooled", [True, False])
def test_two_stage_matches_loop_reference(direction, pooled, gen):
    v = random_batch(6, 5, 8, generator=gen, pooled=pooled)
    t = random_batch(9, 4, 8, generator=gen, pooled=pooled)
    aligner = create_aligner("two_stage", top_k=3, alpha=0.3, direction=direction, local_options={"chunk_pairs": 4})
    got = aligner(v, t).double()
    glob, shortlist, mixed = reference_two_stage(v, t, 3, 0.3, direction)

    for (i, j), score in mixed.items():
        assert float(got[i, j]) == pytest.approx(score, abs=1e-5)
    outside = [p for p in itertools.product(range(6), range(9)) if p not in shortlist]
    assert outside, "the case must leave some pairs off the shortlist"
    # Every non-shortlisted entry is below every shortlisted one, and keeps the global order.
    assert max(float(got[p]) for p in outside) < min(mixed.values())
    for p, q in itertools.combinations(outside, 2):
        g_p, g_q = glob[p[0]][p[1]], glob[q[0]][q[1]]
        if abs(g_p - g_q) > 1e-6:
            assert (float(got[p]) > float(got[q])) == (g_p > g_q)


def test_two_stage_scores_local_only_on_the_shortlist(gen):
    v = random_batch(8, 5, 8, generator=gen)
    t = random_batch(10, 4, 8, generator=gen)
    aligner = create_aligner("two_stage", top_k=2, direction="t2i")
    seen = []
    original = aligner.local.score_pair_block

    def spy(vb, tb):
        seen.append(len(vb))
        return original(vb, tb)

    def forbidden(*args):
        raise AssertionError("two_stage computed a full local block")

    aligner.local.score_pair_block = spy
    aligner.local.score_block = forbidden
    aligner(v, t)
    _, shortlist, _ = reference_two_stage(v, t, 2, 0.5, "t2i")
    assert sum(seen) == len(shortlist) == 2 * 10


def shortlist_trap(n_other: int, dim: int = 6):
    """One query whose true match has the worst global score but a perfect local score.

    The match repeats the query's tokens exactly (mean-max 1) while its pooled vector points away;
    the others have pooled vectors close to the query's and random tokens.
    """
    g = torch.Generator().manual_seed(7)
    query_tokens = torch.randn(1, 4, dim, generator=g)
    query_pooled = F.normalize(torch.randn(1, dim, generator=g), dim=-1)
    others = torch.randn(n_other, 4, dim, generator=g)
    others_pooled = query_pooled + 0.3 * torch.randn(n_other, dim, generator=g)
    mask = torch.ones(1, 4, dtype=torch.bool)
    query = TokenBatch(query_tokens, mask, query_pooled)
    candidates = TokenBatch(
        torch.cat([query_tokens, others]),
        mask.expand(n_other + 1, 4).clone(),
        torch.cat([-query_pooled, others_pooled]),
    )
    return query, candidates  # candidate 0 is the true match


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
def test_true_match_outside_the_shortlist_is_a_miss(direction):
    query, candidates = shortlist_trap(n_other=5)
    transpose = direction == "t2i"  # the query is a caption: images are the candidates

    def scores(aligner):
        out = aligner(candidates, query) if transpose else aligner(query, candidates)
        return out[:, 0] if transpose else out[0]

    options = {"alpha": 0.1, "direction": direction}
    full = scores(create_aligner("two_stage", top_k=6, **options))
    assert int(full.argmax()) == 0, "precondition: with every candidate shortlisted the true match wins"
    short = scores(create_aligner("two_stage", top_k=2, **options))
    assert int(short.argmax()) != 0
    # The miss ranks below every shortlisted candidate, i.e. last of the two it lost to.
    shortlisted = short.topk(2).indices
    assert 0 not in shortlisted.tolist()
    assert bool((short[0] < short[shortlisted]).all())


def test_two_stage_with_everything_shortlisted_is_the_mixed_score(gen):
    v = random_batch(5, 5, 8, generator=gen)
    t = random_batch(7, 4, 8, generator=gen)
    got = create_aligner("two_stage", top_k=100, alpha=0.25, direction="i2t")(v, t)
    glob = torch.tensor(global_cosines(v, t))
    full = 0.25 * glob + 0.75 * create_aligner("mean_max")(v, t).double()
    torch.testing.assert_close(got.double(), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("direction,dim", [("i2t", 1), ("t2i", 0)])
def test_two_stage_alpha_one_ranks_like_global(direction, dim, gen):
    v = random_batch(6, 5, 8, generator=gen)
    t = random_batch(8, 4, 8, generator=gen)
    got = create_aligner("two_stage", top_k=3, alpha=1.0, direction=direction)(v, t)
    glob = torch.tensor(global_cosines(v, t))
    assert torch.equal(got.argsort(dim=dim, descending=True), glob.argsort(dim=dim, descending=True))


def test_two_stage_passes_local_options_through(gen):
    v = random_batch(4, 5, 8, generator=gen)
    t = random_batch(6, 4, 8, generator=gen)
    options = {"epsilon": 0.1, "iterations": 20, "marginals": "uniform"}
    aligner = create_aligner("two_stage", local="tokenflow", local_options=options, top_k=2, alpha=0.0)
    assert aligner.local.config.epsilon == 0.1
    got = aligner(v, t)
    _, shortlist, _ = reference_two_stage(v, t, 2, 0.0, "i2t")
    local = create_aligner("tokenflow", **options)(v, t)
    for i, j in shortlist:
        assert float(got[i, j]) == pytest.approx(float(local[i, j]), abs=1e-5)


def test_two_stage_explain_delegates_to_local(gen):
    v = random_batch(1, 6, 8, generator=gen)
    t = random_batch(1, 5, 8, generator=gen)
    aligner = create_aligner("two_stage", alpha=0.4)
    expl = aligner.explain(v, t)
    local = create_aligner("mean_max").explain(v, t)
    assert torch.equal(expl.weights, local.weights)
    assert torch.equal(expl.word_to_region, local.word_to_region)
    assert expl.score == pytest.approx(float(aligner(v, t)[0, 0]), abs=1e-6)


def test_two_stage_score_pairs_reads_the_two_stage_matrix(gen):
    v = random_batch(5, 5, 8, generator=gen)
    t = random_batch(7, 4, 8, generator=gen)
    aligner = create_aligner("two_stage", top_k=2, direction="i2t")
    pairs = torch.tensor([[0, 0], [1, 6], [4, 3], [2, 2]])
    # Shortlisted or not, each pair gets its entry of the full two-stage matrix.
    torch.testing.assert_close(aligner.score_pairs(v, t, pairs), aligner(v, t)[pairs[:, 0], pairs[:, 1]])


def test_two_stage_unknown_local_aligner():
    with pytest.raises(UnknownNameError, match="mean_maxx"):
        create_aligner("two_stage", local="mean_maxx")


@pytest.mark.parametrize(
    "options",
    [
        {"top_k": 0},
        {"top_k": 2.5},
        {"top_k": True},
        {"alpha": -0.1},
        {"alpha": 1.5},
        {"alpha": float("nan")},
        {"alpha": "half"},
        {"direction": "sideways"},
        {"direction": "both"},  # the union of both directions' shortlists leaked across queries
        {"top_k_i2t": 0},
        {"top_k_t2i": 1.5},
        {"mix": "product"},
        {"train_score": "global"},
        {"local": "two_stage"},
        {"local_options": [("direction", "both")]},
        {"local_options": {"no_such_option": 1}},
        {"local_options": {"direction": "up"}},
        {"local": "tokenflow", "local_options": {"epsilon": -1.0}},
    ],
)
def test_two_stage_bad_config_raises(options):
    with pytest.raises(ConfigError):
        create_aligner("two_stage", **options)


def test_two_stage_without_pooled_ignores_poisoned_padding(gen):
    v = random_batch(4, 5, 8, generator=gen, pooled=False, min_len=2)
    t = random_batch(6, 4, 8, generator=gen, pooled=False, min_len=2)
    aligner = create_aligner("two_stage", top_k=2)
    clean = aligner(v, t)
    poisoned = aligner(
        TokenBatch(v.tokens.masked_fill(~v.mask[..., None], float("nan")), v.mask),
        TokenBatch(t.tokens.masked_fill(~t.mask[..., None], float("inf")), t.mask),
    )
    torch.testing.assert_close(poisoned, clean)


def test_train_mode_scores_every_pair_with_the_mixed_score(gen):
    """Training uses α·global + (1−α)·local on all pairs; eval mode (the default) uses the shortlist."""
    v = random_batch(6, 5, 8, generator=gen)
    t = random_batch(7, 4, 8, generator=gen)
    aligner = create_aligner("two_stage", top_k=1, alpha=0.3)
    assert not aligner.training  # built for inference
    glob = aligner.global_similarity(aligner.prepare(v), aligner.prepare(t))
    full = 0.3 * glob + 0.7 * create_aligner("mean_max")(v, t)
    shortlisted = aligner(v, t)
    aligner.train()
    torch.testing.assert_close(aligner(v, t), full, atol=1e-6, rtol=1e-6)
    aligner.eval()
    assert not torch.allclose(shortlisted, full)  # top_k=1 pushes most pairs below the shortlist
    torch.testing.assert_close(aligner(v, t), shortlisted)
