"""Evaluation scores against a caption gallery prepared once (timed on its own), in query chunks."""

import torch

from finealign.engine.evaluate import score_gallery
from finealign.registry import create_aligner
from tests.conftest import random_batch


def _counting(name, **options):
    aligner = create_aligner(name, **options)
    calls = {"prepare": 0}
    prepare = aligner.prepare_gallery

    def counted(text):
        calls["prepare"] += 1
        return prepare(text)

    aligner.prepare_gallery = counted
    return aligner, calls


def test_one_preparation_serves_every_query_chunk(gen):
    visual, text = random_batch(7, 5, 8, generator=gen), random_batch(12, 6, 8, generator=gen)
    aligner, calls = _counting("cross_attention", chunk_text=5)
    scores = score_gallery(aligner, visual, text, chunk_items=3)
    assert calls["prepare"] == 1
    assert scores.prepare_ms > 0 and scores.latency_ms > 0
    with torch.no_grad():
        torch.testing.assert_close(scores.i2t, aligner(visual, text), atol=1e-6, rtol=0)


def test_a_gallery_dependent_aligner_prepares_once_for_both_directions(gen):
    visual, text = random_batch(6, 5, 8, generator=gen), random_batch(10, 6, 8, generator=gen)
    aligner, calls = _counting("two_stage", top_k=2)
    scores = score_gallery(aligner, visual, text, chunk_items=2)
    assert calls["prepare"] == 1
    with torch.no_grad():
        for queries, got in (("i2t", scores.i2t), ("t2i", scores.t2i)):
            torch.testing.assert_close(got, aligner.query_scores(visual, text, queries), atol=1e-6, rtol=0)
