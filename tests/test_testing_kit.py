"""finealign.testing.check_aligner: every built-in aligner keeps the contract, and a broken one is
caught with the clause it breaks."""

import pytest
import torch

from finealign.aligners.base import (
    Aligner,
    AlignerConfig,
    masked_fill_pairs,
    masked_mean,
    paired_token_similarities,
    token_similarities,
)
from finealign.registry import list_aligners
from finealign.testing import check_aligner, check_padding_invariance
from tests.conftest import REPO

OPTIONS = {
    "two_stage": {"top_k": 3},
    # finite differences need a solver that is smooth in its inputs: converge far past the default
    "tokenflow": {"tolerance": 1e-9, "iterations": 200},  # Newton reaches it in float64 in a few
}


@pytest.mark.parametrize("name", list_aligners())
def test_every_builtin_aligner_keeps_the_contract(name):
    check_aligner(name, options=OPTIONS.get(name))


class PaddingLeak(Aligner):
    """Broken on purpose: skips the base class's zeroing of padding, then sums every position."""

    def prepare(self, batch):
        return batch

    def score_block(self, visual, text):
        sim = token_similarities(visual, text)
        return sim.sum(dim=(2, 3))


class MaxMax(Aligner):
    def score_block(self, visual, text):
        return masked_fill_pairs(token_similarities(visual, text), visual.mask, text.mask, float("-inf")).amax(
            dim=(2, 3)
        )


def test_a_plugin_style_factory_passes_and_a_leaky_one_is_named():
    check_aligner(lambda **kw: MaxMax(AlignerConfig(**kw)))
    with pytest.raises(AssertionError, match="padded token values changed scores"):
        check_aligner(lambda **kw: PaddingLeak(AlignerConfig(normalize=False, **kw)))
    assert torch.get_default_dtype() == torch.float32


def test_the_example_plugin_passes_the_contract(monkeypatch):
    """examples/plugin_aligner's aligner class (imported from its source, no install needed)."""
    monkeypatch.syspath_prepend(str(REPO / "examples" / "plugin_aligner" / "src"))
    from finealign_maxmax.aligner import MaxMaxAligner

    check_aligner(lambda **kw: MaxMaxAligner(AlignerConfig(**kw)))


class MeanOverAllWordSlots(Aligner):
    """Broken on purpose (a common plugin bug): mean-max whose word mean divides by every word
    slot of the block, padding included. Padded similarities are masked, so padded *values*
    change nothing; only the count is wrong, and only when the pair shares a block with a longer
    caption."""

    def score_block(self, visual, text):
        sim = masked_fill_pairs(token_similarities(visual, text), visual.mask, text.mask, float("-inf"))
        best = sim.amax(dim=2).masked_fill(~text.mask[None], 0.0)  # (nv, nt, Lt)
        return best.sum(-1) / text.mask.shape[1]


class IgnoresBothMasks(Aligner):
    """Broken on purpose: mean over all word slots of the max over all region slots; the base
    class has zeroed padded tokens, so padding scores 0 and counts in the mean."""

    def score_block(self, visual, text):
        return token_similarities(visual, text).amax(dim=2).mean(-1)


@pytest.mark.parametrize("broken", [MeanOverAllWordSlots, IgnoresBothMasks])
@pytest.mark.parametrize("seed", range(5))
def test_padding_bugs_are_caught_on_every_seed_and_named(broken, seed):
    with pytest.raises(AssertionError, match=r"padding changed the score of one pair beside a longer item"):
        check_aligner(lambda **kw: broken(AlignerConfig(**kw)), seed=seed)


class MeanMax(Aligner):
    """Correct mean-max: each real word's best real region, averaged over the real words."""

    def score_block(self, visual, text):
        sim = masked_fill_pairs(token_similarities(visual, text), visual.mask, text.mask, float("-inf"))
        return masked_mean(sim.amax(dim=2), text.mask[None], dim=-1)


class PairsOverAllSlots(MeanMax):
    """Broken on purpose only in `score_pairs`: its word mean divides by every word slot."""

    def score_pair_block(self, visual, text):
        sim = paired_token_similarities(visual, text, float("-inf")).amax(1)
        return sim.masked_fill(~text.mask, 0.0).sum(-1) / text.mask.shape[1]


def test_padding_check_names_the_layout_and_the_route_of_a_score_pairs_bug():
    check_padding_invariance(MeanMax(), name="mean_max")  # control: the correct one passes
    with pytest.raises(AssertionError, match=r"padding .* beside a longer item \(score_pairs\)"):
        check_padding_invariance(PairsOverAllSlots(), name="pairs_bug")
