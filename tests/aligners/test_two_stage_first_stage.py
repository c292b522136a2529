"""two_stage's first stage from FAISS: Flat matches the exact global top-K; options are validated."""

import pytest
import torch

from finealign.errors import ConfigError
from finealign.registry import create_aligner
from tests.conftest import random_batch

pytest.importorskip("faiss")


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
@pytest.mark.parametrize("pooled", [True, False])
def test_faiss_flat_first_stage_gives_the_exact_matrix(gen, direction, pooled):
    v = random_batch(12, 5, 16, generator=gen, pooled=pooled)
    t = random_batch(40, 6, 16, generator=gen, pooled=pooled)
    exact = create_aligner("two_stage", top_k=7)
    flat = create_aligner("two_stage", top_k=7, first_stage="faiss_flat")
    glob = exact.global_similarity(v, t)
    assert torch.equal(exact.shortlist(glob, direction), flat.index_shortlist(*exact.global_pair(v, t), direction,
                                                                             flat.config.index_spec()))  # fmt: skip
    assert torch.equal(exact.query_scores(v, t, direction), flat.query_scores(v, t, direction))


@pytest.mark.parametrize("first_stage,options", [("faiss_ivf", {"ivf_lists": 4, "ivf_probe": 1}),
                                                 ("faiss_hnsw", {"hnsw_m": 4, "hnsw_ef_search": 8})])  # fmt: skip
def test_approximate_first_stage_keeps_the_out_of_shortlist_rule(gen, first_stage, options):
    v = random_batch(8, 5, 16, generator=gen)
    t = random_batch(200, 6, 16, generator=gen)
    aligner = create_aligner("two_stage", top_k=5, first_stage=first_stage, first_stage_options=options)
    keep = aligner.index_shortlist(*aligner.global_pair(v, t), "i2t", aligner.config.index_spec())
    assert (keep.sum(1) <= 5).all() and keep.any()
    scores = aligner.query_scores(v, t, "i2t")
    for i in range(len(v)):  # every shortlisted caption above every other
        assert scores[i][keep[i]].min() > scores[i][~keep[i]].max()
    recall = (keep & aligner.shortlist(aligner.global_similarity(v, t), "i2t")).sum() / (5 * len(v))
    assert 0 < recall <= 1  # approximate: reported by the benchmark, not asserted perfect here


def test_first_stage_options_are_validated():
    with pytest.raises(ConfigError, match="first_stage must be one of"):
        create_aligner("two_stage", first_stage="faiss_lsh")
    with pytest.raises(ConfigError, match="first_stage is 'exact'"):
        create_aligner("two_stage", first_stage_options={"ivf_probe": 4})
    with pytest.raises(ConfigError, match=r"unknown index option\(s\) \['nprobe'\]"):
        create_aligner("two_stage", first_stage="faiss_ivf", first_stage_options={"nprobe": 4})
    with pytest.raises(ConfigError, match="hnsw_m must be a positive int"):
        create_aligner("two_stage", first_stage="faiss_hnsw", first_stage_options={"hnsw_m": 0})
    assert create_aligner("two_stage").config.first_stage == "exact"  # the default is unchanged
