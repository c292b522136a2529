"""`aligner.name=X` composes X's own config (its file, or X's dataclass defaults when it has
none): the default aligner's options never carry over to another aligner."""

import pytest

import finealign.config as config
from finealign.config import compose, validate
from finealign.errors import ConfigError
from finealign.registry import ALIGNERS, ensure_builtins
from tests.conftest import REPO

PLUGIN_SRC = REPO / "examples" / "plugin_aligner" / "src"


@pytest.fixture
def example_plugin(monkeypatch):
    """The example plugin as if pip-installed: its config package on the search path, its
    aligner registered (an installed one comes through its entry points)."""
    monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    monkeypatch.setattr(config, "plugin_config_packages", lambda: ["finealign_maxmax.configs"])
    from finealign_maxmax.aligner import MaxMaxAligner

    ensure_builtins("aligners")
    monkeypatch.setitem(ALIGNERS._entries, "max_max", ALIGNERS._entries.get("max_max"))
    ALIGNERS.add("max_max", MaxMaxAligner, override=True, source="plugin:finealign-maxmax")


def test_name_of_a_builtin_composes_like_the_group_choice():
    assert compose(overrides=["aligner.name=hard"]).aligner == compose(overrides=["aligner=hard"]).aligner


def test_name_of_the_example_plugin_composes_its_own_config(example_plugin):
    cfg = compose(overrides=["aligner.name=max_max", "aligner.chunk_text=8"])
    assert dict(cfg.aligner) == {"name": "max_max", "normalize": True, "chunk_visual": 64, "chunk_text": 8,
                                 "chunk_pairs": 32}  # fmt: skip
    assert validate(cfg).aligner == ("max_max", {k: v for k, v in cfg.aligner.items() if k != "name"})


def test_name_of_an_aligner_without_a_config_file_gets_its_dataclass_defaults(monkeypatch):
    from finealign.aligners.base import Aligner

    class Bare(Aligner):
        """A registered aligner with no aligner/<name>.yaml anywhere."""

    ensure_builtins("aligners")
    monkeypatch.setitem(ALIGNERS._entries, "bare_test", None)
    ALIGNERS.add("bare_test", Bare, override=True)
    cfg = compose(overrides=["aligner.name=bare_test", "aligner.chunk_text=7"])
    assert dict(cfg.aligner) == {"name": "bare_test", "chunk_text": 7}  # no 'direction' from mean_max
    assert validate(cfg).aligner == ("bare_test", {"chunk_text": 7})
    assert "bare_test-infonce" in str(cfg.output_dir)


def test_name_and_group_choice_together_are_refused():
    with pytest.raises(ConfigError, match=r"both choose the aligner: give it once, as aligner=hard"):
        compose(overrides=["aligner=global", "aligner.name=hard"])
