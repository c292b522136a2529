"""Retrieval is directional: a gallery-dependent aligner (two_stage) is scored per query direction
and per COCO fold, and never credits a query with a candidate only another query's shortlist held."""

import pytest
import torch
import torch.nn.functional as F

from finealign.engine.evaluate import fold_gallery_metrics, gallery_metrics, score_gallery
from finealign.engine.metrics import KS, fold_metrics, retrieval_metrics
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch
from tests.aligners.reference import mean_max_pair, real_tokens
from tests.aligners.test_two_stage import global_cosines
from tests.conftest import random_batch


def unit(*xs: float) -> torch.Tensor:
    return F.normalize(torch.tensor(xs, dtype=torch.float32), dim=0)


def cross_direction_trap() -> tuple[TokenBatch, TokenBatch, torch.Tensor]:
    """Two images, two captions (caption j belongs to image j), top_k = 1.

    Image 0's global top-1 is caption 1, so its true caption 0 is NOT on image 0's shortlist;
    caption 0's global top-1 is image 0, and their local (token) score is perfect. A union of the
    two directions' shortlists would re-rank (image 0, caption 0) and give image 0 an R@1 hit.
    """
    e4 = unit(0, 0, 0, 1)
    visual = TokenBatch(
        torch.stack([e4, unit(0, 0, 1, 0)])[:, None, :],
        torch.ones(2, 1, dtype=torch.bool),
        torch.stack([unit(1, 0, 0, 0), unit(0, 1, 0, 0)]),
    )
    text = TokenBatch(
        torch.stack([e4, -e4])[:, None, :],
        torch.ones(2, 1, dtype=torch.bool),
        torch.stack([unit(0.6, 0, 0.8, 0), unit(0.9, 0.436, 0, 0)]),
    )
    return visual, text, torch.tensor([0, 1])


def test_a_true_caption_only_its_own_shortlist_holds_is_not_an_image_query_hit():
    visual, text, owner = cross_direction_trap()
    aligner = create_aligner("two_stage", top_k=1, alpha=0.5)
    glob = aligner.global_similarity(aligner.prepare(visual), aligner.prepare(text))
    # Preconditions of the trap: caption 0 is outside image 0's top-1, image 0 is caption 0's top-1.
    assert int(glob[0].argmax()) == 1 and int(glob[:, 0].argmax()) == 0

    scores = score_gallery(aligner, visual, text, chunk_items=1)
    metrics = gallery_metrics(scores, owner)
    assert scores.i2t[0, 0] < scores.i2t[0, 1]  # image 0 ranks its true caption below caption 1
    assert metrics["i2t_r1"] == 50.0  # image 1 hits, image 0 misses
    # The caption query legitimately finds image 0: its own shortlist holds it.
    assert scores.t2i[0, 0] > scores.t2i[1, 0]
    # What the old union did: re-score the pair in image 0's row too → a hit it never earned.
    union = scores.i2t.clone()
    union[0, 0] = scores.t2i[0, 0]
    assert retrieval_metrics(union, owner)["i2t_r1"] == 100.0


def loop_two_stage_ranks(visual, text, owner, top_k, alpha, queries):
    """Per-query two-stage ranks by loops: each query shortlists its own global top-K, shortlisted
    candidates are ordered by α·G + (1−α)·mean_max, the rest follow in global order."""
    glob = global_cosines(visual, text)
    nv, nt = len(visual), len(text)
    ranks = []
    query_count = nv if queries == "i2t" else nt
    for q in range(query_count):
        if queries == "i2t":
            candidates, g = list(range(nt)), [glob[q][j] for j in range(nt)]
            pair = lambda c: (q, c)  # noqa: E731
            is_true = lambda c: int(owner[c]) == q  # noqa: E731
        else:
            candidates, g = list(range(nv)), [glob[i][q] for i in range(nv)]
            pair = lambda c: (c, q)  # noqa: E731
            is_true = lambda c: int(owner[q]) == c  # noqa: E731
        shortlist = sorted(candidates, key=lambda c: -g[c])[:top_k]
        mixed = {}
        for c in shortlist:
            i, j = pair(c)
            local = mean_max_pair(real_tokens(visual, i), real_tokens(text, j))
            mixed[c] = alpha * g[c] + (1 - alpha) * local
        order = sorted(shortlist, key=lambda c: -mixed[c]) + sorted(
            (c for c in candidates if c not in mixed), key=lambda c: -g[c]
        )
        ranks.append(1 + next(r for r, c in enumerate(order) if is_true(c)))
    return torch.tensor(ranks, dtype=torch.float64)


@pytest.mark.parametrize("top_k", [1, 3, 7])
def test_two_stage_recall_equals_its_per_query_loop_definition(top_k, gen):
    n_img, per_image = 12, 3
    visual = random_batch(n_img, 5, 8, generator=gen)
    text = random_batch(n_img * per_image, 4, 8, generator=gen)
    owner = torch.arange(n_img).repeat_interleave(per_image)
    aligner = create_aligner("two_stage", top_k=top_k, alpha=0.4)
    got = gallery_metrics(score_gallery(aligner, visual, text, chunk_items=5), owner)
    for queries in ("i2t", "t2i"):
        ranks = loop_two_stage_ranks(visual, text, owner, top_k, 0.4, queries)
        for k in KS:
            expected = float(100.0 * (ranks <= k).double().mean())
            # Never above the per-query definition (that is the leak); equal, in fact.
            assert got[f"{queries}_r{k}"] <= expected + 1e-9
            assert got[f"{queries}_r{k}"] == pytest.approx(expected)


def test_per_direction_shortlist_lengths_follow_their_options(gen):
    visual = random_batch(9, 5, 8, generator=gen)
    text = random_batch(11, 4, 8, generator=gen)
    aligner = create_aligner("two_stage", top_k=2, top_k_t2i=4)
    glob = aligner.global_similarity(aligner.prepare(visual), aligner.prepare(text))
    assert aligner.shortlist(glob, "i2t").sum(dim=1).tolist() == [2] * 9
    assert aligner.shortlist(glob, "t2i").sum(dim=0).tolist() == [4] * 11


def test_coco_folds_of_a_gallery_dependent_aligner_are_scored_each_on_its_own(gen):
    folds, fold_size, per_image = 3, 6, 2
    n_img = folds * fold_size
    visual = random_batch(n_img, 5, 8, generator=gen)
    text = random_batch(n_img * per_image, 4, 8, generator=gen)
    owner = torch.arange(n_img).repeat_interleave(per_image)
    aligner = create_aligner("two_stage", top_k=2, alpha=0.3)
    scores = score_gallery(aligner, visual, text, chunk_items=4)
    got = fold_gallery_metrics(aligner, scores, visual, text, owner, folds, fold_size, chunk_items=4)

    expected = []
    for f in range(folds):
        images = list(range(f * fold_size, (f + 1) * fold_size))
        captions = [j for j in range(len(owner)) if int(owner[j]) in images]
        v, t = visual[images[0] : images[-1] + 1], text[torch.tensor(captions)]
        fold_owner = owner[captions] - images[0]
        sims = {q: aligner.query_scores(v, t, q) for q in ("i2t", "t2i")}
        expected.append(retrieval_metrics(sims["i2t"], fold_owner, t2i_sim=sims["t2i"]))
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "rsum"):
        assert got[key] == pytest.approx(sum(m[key] for m in expected) / folds)
    # Slicing the full-gallery matrices instead is a different (wrong) number on this gallery.
    sliced = fold_metrics(scores.i2t, owner, folds, fold_size)
    assert sliced["rsum"] != pytest.approx(got["rsum"])


def test_gallery_independent_folds_are_slices(gen):
    visual = random_batch(8, 5, 8, generator=gen)
    text = random_batch(16, 4, 8, generator=gen)
    owner = torch.arange(8).repeat_interleave(2)
    aligner = create_aligner("mean_max")
    scores = score_gallery(aligner, visual, text, chunk_items=3)
    got = fold_gallery_metrics(aligner, scores, visual, text, owner, 2, 4, chunk_items=3)
    assert got == pytest.approx(fold_metrics(scores.i2t, owner, 2, 4))


def test_retrieval_metrics_rank_each_direction_from_its_own_matrix(gen):
    sim = torch.randn(4, 8, generator=gen)
    owner = torch.arange(4).repeat_interleave(2)
    other = torch.randn(4, 8, generator=gen)
    both = retrieval_metrics(sim, owner, t2i_sim=other)
    assert {k: v for k, v in both.items() if k.startswith("i2t")} == {
        k: v for k, v in retrieval_metrics(sim, owner).items() if k.startswith("i2t")
    }
    assert {k: v for k, v in both.items() if k.startswith("t2i")} == {
        k: v for k, v in retrieval_metrics(other, owner).items() if k.startswith("t2i")
    }
    with pytest.raises(Exception, match="t2i_sim"):
        retrieval_metrics(sim, owner, t2i_sim=other[:, :7])


def test_evaluation_records_and_warns_about_an_unconverged_solver(gen):
    from finealign.engine.evaluate import warn_if_unconverged

    aligner = create_aligner("two_stage", local="tokenflow", local_options={"epsilon": 0.02, "iterations": 2}, top_k=2)
    visual, text = random_batch(4, 5, 8, generator=gen), random_batch(8, 4, 8, generator=gen)
    aligner.reset_diagnostics()
    score_gallery(aligner, visual, text, chunk_items=4)
    report = aligner.diagnostics()
    assert report["converged"] == 0.0 and report["iterations"] == 2.0
    with pytest.warns(RuntimeWarning, match="truncated solver"):
        warn_if_unconverged(report)


def test_a_truncated_solver_is_named_in_tables():
    from finealign.engine.results import solver_label

    truncated = {"aligner_converged": 0.0, "aligner_iterations": 3.0, "aligner_marginal_error": 0.4612}
    assert solver_label("tokenflow", truncated) == "tokenflow (3 it., marginal err 0.46)"
    assert solver_label("tokenflow", {**truncated, "aligner_converged": 1.0}) == "tokenflow"
    assert solver_label("global", {}) == "global"
