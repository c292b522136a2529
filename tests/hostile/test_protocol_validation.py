"""Hostile input to `finealign bench` / `finealign report` (issue 26): a mistyped `tune.metric`, a
report pointed at a database that holds no such protocol, and ranks.npz files that cannot be what
an evaluation wrote — each a named error with exit code 2, before anything runs or is computed."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from finealign.cli.main import main as cli_main
from finealign.protocol.stats import QueryRanks, RanksError, paired_bootstrap


# -- tune.metric --------------------------------------------------------------------------------
@pytest.mark.parametrize(("metric", "hint"), [("rsun", "did you mean 'rsum'"), ("i2t_R1", "'i2t_r1'")])
def test_a_mistyped_tune_metric_is_refused_before_any_trial(metric, hint, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["bench", "protocol=toy", f"protocol.tune.metric={metric}", "--out", str(out),
            "--storage", f"sqlite:///{tmp_path / 'p.db'}", "--no-progress"]  # fmt: skip
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert f"tune.metric {metric!r} is no metric the engine reports" in err and hint in err
    assert not out.exists() and not (tmp_path / "p.db").exists()  # nothing created, nothing run


def test_the_metrics_the_protocol_accepts_are_those_an_evaluation_reports():
    import torch

    from finealign.engine.metrics import GALLERY_METRICS, retrieval_metrics

    reported = retrieval_metrics(torch.randn(3, 6), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert set(GALLERY_METRICS) == set(reported)


# -- report on the wrong database -------------------------------------------------------------------
@pytest.fixture
def protocol_dir(tmp_path):
    """A protocol folder as `finealign bench` leaves it (protocol.json), without its database."""
    from finealign.protocol.spec import ProtocolSpec

    spec = ProtocolSpec.from_dict(
        {"study": "hostile", "methods": {"global": {"overrides": ["aligner=global"]}}, "reference": "global"}
    )
    out = tmp_path / "hostile"
    out.mkdir()
    (out / "protocol.json").write_text(json.dumps({"spec": json.loads(json.dumps(spec.to_dict(), default=str))}))
    return out


@pytest.mark.parametrize("case", ["missing", "empty", "another study"])
def test_report_of_a_protocol_on_a_database_without_it_is_refused(case, protocol_dir, tmp_path, capsys):
    db = tmp_path / "x.db"
    if case == "empty":
        db.write_bytes(b"")
    elif case == "another study":
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.create_study(storage=f"sqlite:///{db}", study_name="someone-elses")
    assert cli_main(["report", "hostile", "--out", str(protocol_dir), "--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    expected = {"missing": "no database at", "empty": "is empty (0 bytes)",
                "another study": "holds no study of the protocol 'hostile'"}[case]  # fmt: skip
    assert expected in err and "Traceback" not in err
    assert case != "another study" or "someone-elses" in err
    assert not (protocol_dir / "protocol.md").exists()  # no empty table written


# -- impossible ranks -----------------------------------------------------------------------------
def _save(path, **arrays):
    good = {"i2t": np.array([1, 2, 1]), "t2i": np.array([1, 3, 2, 1, 1, 2]), "caption_item": np.repeat(np.arange(3), 2)}
    np.savez(path, **{**good, **arrays})
    return path


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"i2t": np.array([1, 7, 1])}, r"1 i2t ranks outside 1\.\.6"),  # 6 captions in the gallery
        ({"t2i": np.array([1, 3, 2, 1, 4, 2])}, r"1 t2i ranks outside 1\.\.3"),  # 3 images
        ({"i2t": np.array([0, 1, 1])}, r"i2t ranks outside 1\.\.6.*e\.g\. 0"),
        ({"i2t": np.array([-2, 1, 1])}, r"outside 1\.\.6"),
        ({"t2i": np.array([1.0, 1.5, 2, 1, 1, 2])}, r"t2i must hold whole numbers, got 1\.5"),
        ({"i2t": np.array([1.0, np.nan, 1])}, r"i2t must hold whole numbers"),
        ({"i2t": np.array(["1", "2", "1"])}, r"i2t must hold whole numbers, got dtype"),
        ({"caption_item": np.repeat(np.arange(3), 2)[:5]}, r"6 caption ranks but 5 caption images"),
        ({"caption_item": np.array([0, 0, 1, 1, 2, 5])}, r"caption_item names images outside 0\.\.2"),
        ({"i2t": np.ones((3, 1), dtype=int)}, r"i2t must be a non-empty 1-D array"),
    ],
)  # fmt: skip
def test_impossible_ranks_are_refused_with_the_file_named(arrays, match, tmp_path):
    path = _save(tmp_path / "ranks.npz", **arrays)
    with pytest.raises(RanksError, match=match) as info:
        QueryRanks.load(path)
    assert str(path) in str(info.value)


def test_a_ranks_file_that_is_damaged_or_lacks_an_array_is_refused(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(RanksError, match="no readable ranks file"):
        QueryRanks.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "partial.npz", i2t=np.array([1]))
    with pytest.raises(RanksError, match="lacks t2i, caption_item"):
        QueryRanks.load(tmp_path / "partial.npz")


def test_ranks_whose_shapes_disagree_between_methods_give_no_interval(tmp_path):
    ours = QueryRanks.load(_save(tmp_path / "a.npz"))
    theirs = QueryRanks.load(_save(tmp_path / "b.npz", i2t=np.array([1, 1]), caption_item=np.array([0, 0, 1, 1, 1, 1]),
                                   t2i=np.array([1, 1, 2, 1, 1, 2])))  # fmt: skip
    with pytest.raises(RanksError, match="different queries"):
        paired_bootstrap({0: ours, 1: ours}, {0: theirs, 1: theirs}, resamples=9)
    assert paired_bootstrap({0: ours, 1: ours}, {0: ours, 1: ours}, resamples=9).estimate == 0.0  # the good ones pass
