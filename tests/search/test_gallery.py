"""Stored galleries: build → save → load → query, re-ranking equal to two_stage, bad input."""

import numpy as np
import pytest
import torch

from finealign.errors import ConfigError, DataError, ShapeError
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch
from tests.conftest import random_batch

pytest.importorskip("faiss")

from finealign.ann import IndexSpec, brute_force_search  # noqa: E402
from finealign.kernels.normalize import l2_normalize  # noqa: E402
from finealign.search import Gallery, add_index, write_gallery  # noqa: E402


def fp16_exact(batch: TokenBatch) -> TokenBatch:
    """The batch with fp16-representable tokens: the store keeps float16, so both sides see the same values."""
    return TokenBatch(batch.tokens.half().float(), batch.mask, batch.pooled)


def store(tmp_path, batch: TokenBatch, modality: str, name: str = "g", **indexes) -> Gallery:
    pooled = None if batch.pooled is None else batch.pooled.numpy()
    folder = write_gallery(tmp_path / name, batch.tokens.half().numpy(), batch.mask.numpy(), pooled,
                           modality=modality, feature_source="test-towers",
                           indexes=indexes or {"flat": IndexSpec("flat")}, chunk=13)  # fmt: skip
    return Gallery(folder)


@pytest.mark.parametrize("pooled", [True, False])
def test_round_trip_flat_query_equals_brute_force(tmp_path, gen, pooled):
    captions = fp16_exact(random_batch(80, 7, 16, generator=gen, pooled=pooled))
    images = random_batch(5, 6, 16, generator=gen, pooled=pooled)
    gallery = store(tmp_path, captions, "text")
    result = gallery.query(images, 12)
    want = l2_normalize(captions.with_pooled().pooled).numpy()
    query = l2_normalize(images.with_pooled().pooled).numpy()
    ref_scores, ref_ids = brute_force_search(want, query, 12)
    np.testing.assert_array_equal(result.ids, ref_ids)
    np.testing.assert_allclose(result.scores, ref_scores, atol=1e-5)
    assert len(gallery) == 80 and gallery.dim == 16


@pytest.mark.parametrize("modality", ["text", "visual"])
@pytest.mark.parametrize("local", ["mean_max", "hard"])
def test_rerank_equals_two_stage_for_the_same_shortlist(tmp_path, gen, modality, local):
    images = fp16_exact(random_batch(6, 5, 12, generator=gen))
    captions = fp16_exact(random_batch(30, 7, 12, generator=gen))
    direction = "i2t" if modality == "text" else "t2i"
    aligner = create_aligner("two_stage", local=local, top_k=8, alpha=0.3)
    matrix = aligner.query_scores(images, captions, direction)  # what two_stage computes
    gallery_side, queries = (captions, images) if modality == "text" else (images, captions)
    gallery = store(tmp_path, gallery_side, modality)
    result = gallery.query(queries, 5, rerank=aligner)  # shortlist: two_stage's own top_k = 8
    rows = matrix if direction == "i2t" else matrix.T  # one row per query
    for q in range(len(queries)):
        want = rows[q].topk(5)
        np.testing.assert_array_equal(result.ids[q], want.indices.numpy())
        np.testing.assert_allclose(result.scores[q], want.values.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("local", ["mean_max", "hard"])
def test_rerank_by_a_token_aligner_ranks_the_shortlist_by_its_score(tmp_path, gen, local):
    images = random_batch(4, 5, 12, generator=gen)
    captions = fp16_exact(random_batch(40, 6, 12, generator=gen))
    aligner = create_aligner(local)
    gallery = store(tmp_path, captions, "text")
    shortlist = gallery.query(images, 15).ids
    result = gallery.query(images, 6, rerank=aligner, shortlist=15)
    full = aligner(images, captions)
    for q in range(len(images)):
        candidates = torch.from_numpy(shortlist[q])
        best = full[q, candidates].topk(6)
        np.testing.assert_array_equal(result.ids[q], candidates[best.indices].numpy())
        np.testing.assert_allclose(result.scores[q], best.values.numpy(), rtol=1e-5, atol=1e-6)


def test_query_with_another_dimension_or_feature_source_names_both(tmp_path, gen):
    gallery = store(tmp_path, random_batch(20, 4, 8, generator=gen), "text")
    with pytest.raises(ShapeError, match=r"d=10 .* d=8 .*test-towers"):
        gallery.query(random_batch(2, 3, 10, generator=gen), 3)
    with pytest.raises(ConfigError, match=r"'other-towers'.*'test-towers'"):
        gallery.query(random_batch(2, 3, 8, generator=gen), 3, feature_source="other-towers")
    with pytest.raises(ConfigError, match="normalize=False .* L2-normalised"):
        gallery.query(random_batch(2, 3, 8, generator=gen), 3, rerank=create_aligner("two_stage", normalize=False))
    with pytest.raises(ConfigError, match="shortlist"):
        gallery.query(random_batch(2, 3, 8, generator=gen), 5, rerank=create_aligner("mean_max"), shortlist=3)


def test_added_ivf_index_is_approximate_and_recorded(tmp_path, gen):
    captions = random_batch(300, 4, 16, generator=gen)
    gallery = store(tmp_path, captions, "text")
    record = add_index(gallery.folder, "ivf", IndexSpec("ivf", ivf_lists=8, ivf_probe=2))
    assert record["kind"] == "ivf" and record["knobs"]["ivf_probe"] == 2
    queries = random_batch(10, 3, 16, generator=gen)
    exact = gallery.query(queries, 10).ids
    approx = Gallery(gallery.folder, index="ivf").query(queries, 10).ids
    wider = Gallery(gallery.folder, index="ivf", knobs={"ivf_probe": 8}).query(queries, 10).ids
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert 0 < recall <= 1  # reported, not asserted perfect
    np.testing.assert_array_equal(wider, exact)  # probing all 8 cells is exhaustive
    with pytest.raises(ConfigError, match="already has an index named 'ivf'"):
        add_index(gallery.folder, "ivf", IndexSpec("ivf"))
    with pytest.raises(ConfigError, match=r"no index 'hnsw'.*\['flat', 'ivf'\]"):
        Gallery(gallery.folder, index="hnsw")


def test_unfinished_damaged_or_existing_galleries_are_refused(tmp_path, gen):
    gallery = store(tmp_path, random_batch(20, 4, 8, generator=gen), "text")
    with pytest.raises(ConfigError, match="already exists"):
        store(tmp_path, random_batch(20, 4, 8, generator=gen), "text")
    with open(gallery.folder / "tokens.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match="damaged.*tokens.npy"):
        Gallery(gallery.folder)
    (gallery.folder / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest.json"):
        Gallery(gallery.folder)
    assert not list(tmp_path.glob(".g.tmp-*")), "no temporary build folder is left behind"


def test_a_killed_builds_temporary_folder_is_removed_by_the_next_build(tmp_path, gen):
    stale = tmp_path / ".g.tmp-4194999-deadbeef"  # a pid above Linux's pid_max: that process is gone
    stale.mkdir()
    (stale / "tokens.npy").write_bytes(b"partial")
    store(tmp_path, random_batch(10, 3, 8, generator=gen), "text")
    assert not stale.exists() and (tmp_path / "g" / "manifest.json").is_file()
