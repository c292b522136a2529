"""A protocol composes every run from the config tree as it was when it started: edits to the tree
while it runs change nothing, and resuming with a changed tree is refused (naming the files)
unless the changes are adopted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from finealign.config import CONFIG_DIR_ENV, compose, config_dir
from finealign.errors import ConfigError
from finealign.protocol.loader import load_protocol
from finealign.protocol.run import run_protocol
from finealign.sweeps.snapshot import SNAPSHOT_DIR, tree_differences
from tests.protocol.objectives import ranked

PROTOCOL = ["protocol=toy", "protocol.tune.n_trials=1", "protocol.seeds=1"]
QUICK = Path("train") / "quick.yaml"
seen: list[float] = []


def composing(overrides, report):
    """Composes the run's config (what the engine would train) and records its lr; the first run
    edits the tree on disk first, as a colleague might while a protocol runs."""
    live = Path(LIVE[0]) / QUICK
    if "9.0e-3" not in live.read_text():
        live.write_text(live.read_text().replace("lr: 2.0e-3", "lr: 9.0e-3"))
    seen.append(float(compose("config", ["train=quick"]).train.lr))
    return ranked(overrides, report)


LIVE: list[str] = []


@pytest.fixture
def tree(tmp_path, monkeypatch):
    live = tmp_path / "configs"
    shutil.copytree(config_dir(), live)
    assert "lr: 2.0e-3" in (live / QUICK).read_text()
    monkeypatch.setenv(CONFIG_DIR_ENV, str(live))
    LIVE[:] = [str(live)]
    seen.clear()
    return live


def test_runs_compose_from_the_snapshot_and_a_changed_tree_is_refused_unless_adopted(tree, tmp_path, capsys):
    spec, extra = load_protocol(PROTOCOL)
    out, storage = tmp_path / "out", f"sqlite:///{tmp_path / 'p.db'}"
    run_protocol(spec, extra, storage=storage, out_dir=out, objective=composing, methods=["global"], progress=False)
    assert seen == [2.0e-3, 2.0e-3]  # the tuning trial and the final run: the tree as it was at the start
    assert "lr: 9.0e-3" in (tree / QUICK).read_text() and "lr: 2.0e-3" in (out / SNAPSHOT_DIR / QUICK).read_text()
    assert not (out / SNAPSHOT_DIR / "protocol").exists()  # the spec lives in protocol.json

    with pytest.raises(ConfigError, match=r"changed since this protocol started \(changed train/quick\.yaml\)"
                                          r".*--adopt-config-changes"):  # fmt: skip
        run_protocol(spec, extra, storage=storage, out_dir=out, objective=composing, methods=["mean_max"])
    assert seen == [2.0e-3, 2.0e-3]  # refused before any run

    run_protocol(spec, extra, storage=storage, out_dir=out, objective=composing, methods=["mean_max"],
                 progress=False, adopt_config_changes=True)  # fmt: skip
    assert seen[2:] == [9.0e-3, 9.0e-3]  # the runs still to do use the adopted tree
    assert "adopted config changes (changed train/quick.yaml)" in capsys.readouterr().out
    (kept,) = out.glob(f"{SNAPSHOT_DIR}.replaced-*")
    assert "lr: 2.0e-3" in (kept / QUICK).read_text() and "lr: 9.0e-3" in (out / SNAPSHOT_DIR / QUICK).read_text()


def test_bench_refuses_a_changed_tree_with_a_named_error_and_says_how_to_adopt_it(tree, tmp_path, capsys):
    from finealign.cli.main import main as cli_main

    out = tmp_path / "out"
    (out / SNAPSHOT_DIR).parent.mkdir(parents=True)
    shutil.copytree(tree, out / SNAPSHOT_DIR)  # a protocol that started with this tree...
    (tree / "aligner" / "tokenflow.yaml").unlink()  # ...which lost a file since and gained another
    (tree / "aligner" / "mine.yaml").write_text("name: global\n")
    args = ["bench", *PROTOCOL, "--out", str(out), "--storage", f"sqlite:///{tmp_path / 'p.db'}", "--no-progress"]
    assert cli_main(args) != 0
    err = capsys.readouterr().err
    assert "added aligner/mine.yaml" in err and "removed aligner/tokenflow.yaml" in err and "Traceback" not in err


def test_tree_differences_name_each_file_once():
    assert tree_differences({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "x", "d": "4"}) == [
        "changed b",
        "added d",
        "removed c",
    ]


def test_a_sweep_composes_from_its_snapshot_too(tree, tmp_path):
    from finealign.sweeps import run_sweep

    args = ["sweep=toy", "sweep.sampler=random", "sweep.n_trials=1"]
    kw = dict(storage=f"sqlite:///{tmp_path / 's.db'}", out_dir=tmp_path / "sweep", objective=composing,
              progress=False, write_outputs=False)  # fmt: skip
    run_sweep(args, n_trials=1, **kw)
    assert seen == [2.0e-3]  # the tree was edited during the trial; the trial composed the snapshot
    with pytest.raises(ConfigError, match=r"changed since this sweep started \(changed train/quick\.yaml\)"):
        run_sweep(args, n_trials=2, **kw)
    run_sweep(args, n_trials=2, adopt_config_changes=True, **kw)
    assert seen == [2.0e-3, 9.0e-3]
