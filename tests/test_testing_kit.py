"""finealign.testing.check_aligner: every built-in aligner keeps the contract, and a broken one is
caught with the clause it breaks."""

import pytest
import torch

from finealign.aligners.base import Aligner, AlignerConfig, masked_fill_pairs, token_similarities
from finealign.registry import list_aligners
from finealign.testing import check_aligner

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
