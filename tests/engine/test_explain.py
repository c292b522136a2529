"""`finealign explain`: token-level alignments of one test pair under several aligners, drawn."""

import pytest
from PIL import Image

from finealign.cli.main import main as cli_main
from finealign.config import compose
from finealign.engine.experiment import run_experiment
from finealign.errors import ConfigError


def test_explain_draws_one_row_per_aligner_with_a_panel_per_word(tmp_path, capsys):
    run_experiment(compose(overrides=["data=toy", "encoder=toy", "train=quick", "train.epochs=1", f"output_dir={tmp_path}",
                                      "data.num_train=32", "data.num_val=8", "data.num_test=8", "device=cpu"]))  # fmt: skip
    out = tmp_path / "pair.png"
    code = cli_main(["explain", f"ckpt={tmp_path / 'model.pt'}", "image=2", "aligners=mean_max,hard,tokenflow",
                     f"out={out}"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "mean_max" in printed and "tokenflow" in printed and f"picture: {out}" in printed
    words = printed.split("words: ")[1].splitlines()[0].split()
    with Image.open(out) as picture:
        width, height = picture.size
    assert height == pytest.approx(3 * 2.1 * 100, abs=2) and width == pytest.approx(len(words) * 1.9 * 100, abs=2)


def test_explain_names_bad_indices_and_aligners_without_alignments(tmp_path, capsys):
    run_experiment(compose(overrides=["data=toy", "encoder=toy", "train=quick", "train.epochs=1", f"output_dir={tmp_path}",
                                      "data.num_train=32", "data.num_val=8", "data.num_test=8", "device=cpu"]))  # fmt: skip
    assert cli_main(["explain", f"ckpt={tmp_path / 'model.pt'}", "image=99"]) == 2
    assert "outside the test split" in capsys.readouterr().err
    assert cli_main(["explain", f"ckpt={tmp_path / 'model.pt'}", "image=0", "aligners=global"]) == 2
    assert "no token-level alignment" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="needs ckpt"):
        from argparse import Namespace

        from finealign.cli.explain_cmd import run

        run(Namespace(overrides=["image=1"]))
