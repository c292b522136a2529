"""A prepared caption gallery (`Aligner.prepare_gallery` + `score_prepared`) scores like the
aligner called on the captions, for every aligner and its options; plugins get it for free."""

import pytest
import torch

from finealign.aligners.base import Aligner, AlignerConfig, PreparedGallery, masked_fill_pairs, token_similarities
from finealign.errors import ConfigError, ShapeError
from finealign.registry import create_aligner
from finealign.testing import check_aligner
from tests.conftest import random_batch

VARIANTS = [
    ("global", {}),
    ("global", {"source": "mean"}),
    ("mean_max", {}),
    ("mean_max", {"direction": "both"}),
    ("mean_max", {"word_pooling": "sum", "scale": 10.0, "zero_pad_visual": 6}),
    ("hard", {}),
    ("hard", {"direction": "visual", "pooling": "lse_chan"}),
    ("hard", {"direction": "both", "pooling": "mean"}),
    ("weighted_mean_max", {"dim": 8}),
    ("weighted_mean_max", {"dim": 8, "direction": "text", "weight_head": "mlp", "weight_input": "raw"}),
    ("cross_attention", {}),
    ("cross_attention", {"pooling": "lse", "scan_norm": False}),
    ("tokenflow", {}),
    ("tokenflow", {"acceleration": "none", "marginals": "uniform"}),
    ("tokenflow", {"relax_visual": True, "tolerance": 0.0, "iterations": 20}),
    ("two_stage", {"top_k": 3}),
    ("two_stage", {"top_k": 3, "local": "cross_attention", "first_stage": "faiss_flat"}),
]


@pytest.mark.parametrize("name,options", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_prepared_gallery_scores_equal_the_aligner_on_the_captions(name, options, gen):
    # small chunks: several caption blocks and query chunks of different lengths
    visual, text = random_batch(5, 6, 8, generator=gen), random_batch(11, 7, 8, generator=gen)
    aligner = create_aligner(name, **options, chunk_visual=2, chunk_text=4)
    if name == "weighted_mean_max":  # a head away from its zero initialisation: non-uniform weights
        torch.nn.init.normal_(aligner.text_weight[-1].weight if options.get("weight_head") == "mlp"
                              else aligner.text_weight.weight)  # fmt: skip
    with torch.no_grad():
        gallery = aligner.prepare_gallery(text)
        for queries in ("i2t", "t2i"):
            got = aligner.query_scores_prepared(visual, gallery, queries)
            torch.testing.assert_close(got, aligner.query_scores(visual, text, queries), atol=1e-6, rtol=0)
        torch.testing.assert_close(aligner.score_prepared(visual, gallery), aligner(visual, text), atol=1e-6, rtol=0)


def test_the_gallery_is_made_once_and_holds_the_captions_sorted_in_blocks(gen):
    text = random_batch(9, 7, 8, generator=gen)
    gallery = create_aligner("mean_max", chunk_text=4).prepare_gallery(text)
    assert len(gallery) == 9 and len(gallery.blocks) == 3 and gallery.captions is text
    lengths = text.mask.sum(1)[gallery.order]
    assert bool((lengths[1:] >= lengths[:-1]).all())
    assert torch.equal(gallery.order[gallery.restore], torch.arange(9))
    # the packed words of each block are its real words, caption after caption
    assert sum(len(block.words) for block in gallery.blocks) == int(text.mask.sum())


class MaxMax(Aligner):
    """A plugin that defines only score_block."""

    def score_block(self, visual, text):
        sim = masked_fill_pairs(token_similarities(visual, text), visual.mask, text.mask, float("-inf"))
        return sim.amax(dim=(2, 3))


class OwnForward(Aligner):
    """A plugin with its own forward (no blocks): its gallery stores the captions."""

    calls = 0

    def forward(self, visual, text):
        OwnForward.calls += 1
        return visual.mean_pooled() @ text.mean_pooled().T


def test_plugins_get_a_prepared_gallery_for_free(gen):
    visual, text = random_batch(3, 4, 8, generator=gen), random_batch(5, 4, 8, generator=gen)
    plugin = MaxMax(AlignerConfig(chunk_text=2))
    torch.testing.assert_close(plugin.score_prepared(visual, plugin.prepare_gallery(text)), plugin(visual, text))
    own = OwnForward()
    gallery = own.prepare_gallery(text)
    assert gallery.text is None and gallery.captions is text  # stored, scored by its forward
    before = OwnForward.calls
    torch.testing.assert_close(own.score_prepared(visual, gallery), own(visual, text))
    assert OwnForward.calls == before + 2
    check_aligner(lambda **kw: MaxMax(AlignerConfig(**kw)))


class StaleBlocks(Aligner):
    """Broken on purpose: scoring changes its prepared blocks in place. Called on the captions it
    prepares them afresh each time, so only a gallery reused by several calls shows it."""

    def score_block(self, visual, text):
        return (visual.mean_pooled() @ text.mean_pooled().T).to(visual.tokens.dtype)

    def score_prepared_block(self, visual, block):
        block.tokens.mul_(0.5)
        return self.score_block(visual, block)


def test_the_contract_kit_names_a_prepared_gallery_that_scores_otherwise():
    with pytest.raises(AssertionError, match="prepared gallery differ"):
        check_aligner(lambda **kw: StaleBlocks(AlignerConfig(**{"chunk_text": 2, **kw})))


def test_a_gallery_scores_only_with_the_aligner_that_prepared_it(gen):
    visual, text = random_batch(2, 4, 8, generator=gen), random_batch(3, 4, 8, generator=gen)
    first, second = create_aligner("mean_max"), create_aligner("mean_max")
    gallery = first.prepare_gallery(text)
    with pytest.raises(ConfigError, match="prepared by MeanMaxAligner@"):
        second.score_prepared(visual, gallery)
    with pytest.raises(ConfigError, match="PreparedGallery"):
        first.score_prepared(visual, text)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="dims differ"):
        first.score_prepared(random_batch(2, 4, 6, generator=gen), gallery)
    assert isinstance(gallery, PreparedGallery)


def test_bad_captions_fail_when_the_gallery_is_prepared(gen):
    text = random_batch(3, 4, 8, generator=gen)
    text.mask[1] = False
    with pytest.raises(ShapeError, match=r"text: item\(s\) \[1\] have no real token"):
        create_aligner("hard").prepare_gallery(text)


@pytest.mark.parametrize("name", ["mean_max", "hard"])
def test_word_max_in_several_tiles_matches_the_loop_reference(name, gen, monkeypatch):
    from finealign.aligners import base
    from tests.aligners.reference import hard_pair, mean_max_pair, pairwise, real_tokens

    monkeypatch.setattr(base, "WORD_TILE", 1)  # tiles of 64 words: ~140 real words take three
    visual, text = random_batch(3, 6, 8, generator=gen), random_batch(25, 9, 8, generator=gen)
    assert int(text.mask.sum()) > 128 and not bool(visual.mask.all())
    aligner = create_aligner(name)
    pair = mean_max_pair if name == "mean_max" else hard_pair
    ref = pairwise(visual, text, lambda i, j: pair(real_tokens(visual, i), real_tokens(text, j)))
    with torch.no_grad():
        torch.testing.assert_close(aligner.score_prepared(visual, aligner.prepare_gallery(text)).double(), ref,
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
