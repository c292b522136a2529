"""`-m` on eval, profile and cache leaves `<sweep dir>/multirun.yaml` as `train -m` does (Hydra's
multirun record: the first job's config and the sweep's `hydra:` node). profile's, on a run that
profiles: tests/cli/test_hydra_flags.py::test_profile_and_cache_take_hydra_flags."""

import yaml

from finealign.cli import cache_cmd, eval_cmd
from finealign.cli.main import main as cli_main


def read_record(folder):
    record = yaml.safe_load((folder / "multirun.yaml").read_text())
    return record, record["hydra"]


def test_eval_multirun_writes_multirun_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = []  # the evaluations themselves: tests/cli/test_hydra_flags.py::test_eval_multirun_and_run_dir
    monkeypatch.setattr(eval_cmd, "_evaluate_one", lambda o, out, *_: done.append(out) or {"output_dir": out})
    assert cli_main(["eval", "--json", "-m", "aligner=global,mean_max", "data=toy", "hydra.sweep.dir=evals"]) == 0
    record, hydra = read_record(tmp_path / "evals")
    assert hydra["mode"] == "MULTIRUN" and hydra["job"]["name"] == "eval" and hydra["sweep"]["dir"] == "evals"
    assert "aligner=global,mean_max" in hydra["overrides"]["task"] and record["aligner"]["name"] == "global"
    assert hydra["runtime"]["choices"]["aligner"] == "global"  # Hydra's node of the first job's composition
    assert done == ["evals/0", "evals/1"]


def test_cache_multirun_writes_multirun_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    built = []
    monkeypatch.setattr(cache_cmd, "build", lambda settings: built.append(settings.splits) or {})  # no encoder runs
    assert cli_main(["cache", "-m", "splits=[test],[val]", "hydra.sweep.dir=caches"]) == 0
    record, hydra = read_record(tmp_path / "caches")
    assert (
        hydra["mode"] == "MULTIRUN"
        and hydra["job"]["name"] == "cache"
        and "splits=[test],[val]" in hydra["overrides"]["task"]
    )
    assert record["splits"] == ["test"] and [list(s) for s in built] == [["test"], ["val"]]
