"""The plugin's own test: finealign's aligner contract in one call."""

from finealign.testing import check_aligner


def test_max_max_keeps_the_aligner_contract():
    check_aligner("max_max")
