import pytest

from finealign.cli.main import main

SEVEN = ["cross_attention", "global", "hard", "mean_max", "tokenflow", "two_stage", "weighted_mean_max"]


def test_list_aligners_shows_all_seven_with_descriptions(capsys):
    assert main(["list", "aligners"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    for name in SEVEN:
        assert name in lines, f"{name} missing from `finealign list aligners`"
        assert len(lines[name].split(None, 1)[1]) > 10, f"{name} has no description"


def test_list_with_glob(capsys):
    assert main(["list", "aligners", "mean_*"]) == 0
    out = capsys.readouterr().out
    assert "mean_max" in out and "tokenflow" not in out


def test_list_unknown_kind_is_a_clear_error(capsys):
    assert main(["list", "aligner"]) == 2
    assert "Did you mean 'aligners'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["losses", "encoders", "datasets"])
def test_list_other_kinds(kind, capsys):
    assert main(["list", kind]) == 0
    assert capsys.readouterr().out.startswith(f"{kind} (")
