"""FAISS top-K search (ann.py) against a brute-force numpy reference."""

import numpy as np
import pytest

from finealign.errors import ConfigError, ShapeError

faiss = pytest.importorskip("faiss")

from finealign.ann import IndexSpec, brute_force_search, build_index, search  # noqa: E402


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((16, dim))
    x = centers[rng.integers(0, 16, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def reference_ranking(vectors, query, k):
    """Loop reference: sort (score, id) pairs by score descending, then id ascending."""
    scored = sorted(((float(np.dot(v, query)), i) for i, v in enumerate(vectors)), key=lambda s: (-s[0], s[1]))
    return [i for _, i in scored[:k]]


def test_flat_top_k_equals_brute_force_exactly():
    vectors, queries = clustered(600, 24, 0), clustered(9, 24, 1)
    scores, ids = search(build_index(vectors, IndexSpec("flat")), queries, 15)
    ref_scores, ref_ids = brute_force_search(vectors, queries, 15)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    for q in range(len(queries)):
        assert ids[q].tolist() == reference_ranking(vectors, queries[q], 15)


def test_ties_are_broken_by_id_in_flat_and_brute_force():
    base = clustered(20, 8, 2)
    vectors = np.tile(base, (4, 1))  # every score appears 4 times: ids i, i+20, i+40, i+60
    query = base[:1]
    _, ids = search(build_index(vectors, IndexSpec("flat")), query, 10)
    _, ref_ids = brute_force_search(vectors, query, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    assert ids[0, :4].tolist() == [0, 20, 40, 60]  # the best score, four times, lowest id first
    assert ids[0].tolist() == reference_ranking(vectors, query[0], 10)


@pytest.mark.parametrize("spec", [IndexSpec("ivf", ivf_lists=16, ivf_probe=4), IndexSpec("hnsw", hnsw_m=8)])
def test_approximate_indexes_report_recall_against_flat(spec):
    vectors, queries = clustered(2000, 32, 3), clustered(20, 32, 4)
    _, flat = search(build_index(vectors, IndexSpec("flat")), queries, 10)
    _, approx = search(build_index(vectors, spec), queries, 10)
    recall = np.mean([len(set(a) & set(f)) / 10 for a, f in zip(approx, flat, strict=True)])
    # Approximate: not asserted perfect, but far above chance (10/2000) on clustered data.
    assert 0.5 < recall <= 1.0
    for row in approx:
        found = row[row >= 0]
        assert len(set(found.tolist())) == len(found) and found.max() < 2000


def test_an_ivf_that_finds_fewer_than_k_fills_the_end_with_minus_one():
    vectors, queries = clustered(400, 16, 5), clustered(3, 16, 6)
    scores, ids = search(build_index(vectors, IndexSpec("ivf", ivf_lists=10, ivf_probe=1)), queries, 400)
    assert (ids == -1).any(), "one probed cell of ten cannot hold all 400 vectors"
    for row_ids, row_scores in zip(ids, scores, strict=True):
        missing = row_ids < 0
        assert not missing[: (~missing).sum()].any()  # real results first, then only -1
        assert np.isneginf(row_scores[missing]).all() and np.isfinite(row_scores[~missing]).all()
        assert (np.diff(row_scores[~missing]) <= 0).all()


def test_index_spec_rejects_bad_knobs_and_query_dimension():
    with pytest.raises(ConfigError, match="kind"):
        IndexSpec("lsh")
    with pytest.raises(ConfigError, match="ivf_probe"):
        IndexSpec("ivf", ivf_probe=0)
    with pytest.raises(ConfigError, match="nprobe"):
        IndexSpec.from_options("ivf", {"nprobe": 4}, "test")
    with pytest.raises(ConfigError, match="ivf_lists=50 exceeds the 20"):
        build_index(clustered(20, 8, 7), IndexSpec("ivf", ivf_lists=50))
    index = build_index(clustered(20, 8, 7), IndexSpec("flat"))
    with pytest.raises(ShapeError, match="d=6 .* d=8"):
        search(index, clustered(2, 6, 8), 3)
