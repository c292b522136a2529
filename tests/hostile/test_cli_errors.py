"""No traceback reaches a user for a cause the code can name (issue 26): the CLI prints one line and
an exit code (2 config/data, 3 diverged, 4 memory/disk/OS path, 130 Ctrl-C); --debug shows the
traceback. Each case below once ended in a traceback, or in exit 0 with nothing done."""

import errno
import os

import pytest

from finealign.cli import main as cli
from finealign.cli.main import failure
from finealign.cli.main import main as cli_main
from finealign.engine.experiment import run_experiment
from finealign.errors import DiskFullError, DivergenceError, ResourceError
from finealign.kept import keep
from tests.hostile.test_runs import toy

TOY = ["data=toy", "encoder=toy", "train=quick", "device=cpu", "data.num_train=32", "data.num_val=8",
       "data.num_test=8", "train.batch_size=8", "train.epochs=1", "train.tensorboard=false", "eval.progress=false"]  # fmt: skip


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


@pytest.mark.parametrize("exc,code,line", [
    (DivergenceError("loss became nan"), 3, "finealign train: diverged: loss became nan"),
    (FloatingPointError("overflow"), 3, "diverged: overflow"),
    (ResourceError("needs 9 GiB"), 4, "error: needs 9 GiB"),
    (DiskFullError(errno.ENOSPC, "disk filled"), 4, "error: disk filled"),
    (OSError(errno.ENOSPC, "No space left on device"), 4, "the disk is full"),
    (PermissionError(errno.EACCES, "Permission denied", "/x/y"), 4, "error: /x/y: Permission denied"),
    (MemoryError(), 4, "out of memory"),
])  # fmt: skip
def test_named_causes_map_to_one_line_and_an_exit_code(exc, code, line):
    got = failure("train", exc)
    assert got is not None and got[0] == code and line in got[1]
    assert failure("train", RuntimeError("a bug")) is None  # not named: its traceback is the report
    assert failure("train", OSError("no path")) is None


def test_ctrl_c_says_what_was_kept(monkeypatch, capsys, tmp_path):
    def interrupted(cfg, **kwargs):
        keep("run", f"run directory {tmp_path}")
        keep("checkpoint", "checkpoint last.pt after epoch 2")
        raise KeyboardInterrupt

    monkeypatch.setattr("finealign.engine.experiment.run_experiment", interrupted)
    assert cli_main(["train", *TOY, f"output_dir={tmp_path}"]) == 130
    assert f"finealign train: stopped; kept: run directory {tmp_path}, checkpoint last.pt after epoch 2" in _err(capsys)


def test_debug_shows_the_traceback_before_the_line(monkeypatch, capsys, tmp_path):
    def diverge(cfg, **kwargs):
        raise DivergenceError("loss became nan")

    monkeypatch.setattr("finealign.engine.experiment.run_experiment", diverge)
    for argv in (["--debug", "train"], ["train", "--debug"]):
        assert cli_main([*argv, *TOY, f"output_dir={tmp_path}"]) == 3
        err = capsys.readouterr().err
        assert "Traceback" in err and err.rstrip().endswith("diverged: loss became nan")


def test_resuming_from_a_saved_model_instead_of_a_checkpoint_is_named(tmp_path, capsys):
    run_experiment(toy(tmp_path / "a", "train.epochs=1"))
    code = cli_main(["train", *TOY, f"output_dir={tmp_path / 'b'}", f"train.resume={tmp_path / 'a' / 'model.pt'}"])
    err = _err(capsys)
    assert code == 2 and "is a saved model (weights and config only): it lacks loss, optimizer" in err
    assert "checkpoints/last.pt" in err


def test_explain_with_no_aligner_or_an_unwritable_picture_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_main(["explain", "ckpt=nowhere.pt", "image=0", "aligners="]) == 2
    assert "aligners= names no aligner" in _err(capsys)
    assert cli_main(["explain", "ckpt=nowhere.pt", "image=0", f"out={blocker / 'x.png'}"]) == 2
    assert "the picture cannot be written" in _err(capsys)
    assert cli_main(["explain", "ckpt=nowhere.pt", "image=0", f"out={tmp_path}"]) == 2
    assert "is a folder" in _err(capsys)


def test_a_png_decompression_bomb_is_a_data_error(tmp_path, monkeypatch):
    from PIL import Image

    from finealign.errors import DataError
    from finealign.formats.images import open_rgb_image

    Image.new("L", (400, 400)).save(tmp_path / "bomb.png")  # compresses to ~1 KB
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 160,000 pixels: > 2× the limit, as a real bomb is
    with pytest.raises(DataError, match="decompression bomb"):
        open_rgb_image(tmp_path / "bomb.png")


def test_cache_verify_on_a_missing_folder_a_file_or_a_dangling_symlink_is_an_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    for target, says in (("missing", "does not exist"), ("file", "is a file"), ("dangling", "a symlink to")):
        assert cli_main(["cache", "--verify", f"cache_dir={tmp_path / target}"]) == 2
        assert says in _err(capsys)


def test_cache_verify_follows_a_symlink_to_an_entry_or_a_cache(tmp_path, capsys):
    from tests.hostile.test_metadata import _entry

    entry = _entry(tmp_path / "cache" / "abc")
    (tmp_path / "to-entry").symlink_to(entry)
    (tmp_path / "to-cache").symlink_to(tmp_path / "cache")
    for target in ("to-entry", "to-cache"):
        assert cli_main(["cache", "--verify", f"cache_dir={tmp_path / target}"]) == 0
        assert capsys.readouterr().out.startswith("ok")


def test_report_on_a_missing_or_empty_database_is_refused(tmp_path, capsys):
    (tmp_path / "empty.db").write_bytes(b"")
    assert cli_main(["report", "x", "--storage", f"sqlite:///{tmp_path / 'missing.db'}"]) == 2
    assert "no database at" in _err(capsys) and not (tmp_path / "missing.db").exists()
    assert cli_main(["report", "x", "--storage", f"sqlite:///{tmp_path / 'empty.db'}"]) == 2
    assert "is empty (0 bytes)" in _err(capsys) and (tmp_path / "empty.db").stat().st_size == 0


@pytest.mark.parametrize("argv,says", [
    (["train", "-m", "seed=0,1", "hydra.run.dir=x"], "use hydra.sweep.dir"),
    (["train", "seed=0", "hydra.sweep.dir=x", "--cfg", "job"], "applies to -m/--multirun only"),
    (["sweep", "sweep=toy", "hydra.run.dir=x"], "Hydra's directory settings do nothing here"),
    (["explain", "ckpt=a.pt", "image=0", "hydra.run.dir=x"], "Hydra's settings do nothing here"),
])  # fmt: skip
def test_hydra_directories_given_where_they_would_be_ignored_are_refused(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(argv) == 2
    assert says in _err(capsys)
    assert not os.listdir(tmp_path)  # nothing was run or written


def test_an_unwritable_mlflow_store_warns_and_the_run_succeeds(tmp_path, capsys, caplog):
    pytest.importorskip("mlflow")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = cli_main(["train", *TOY, f"output_dir={tmp_path / 'run'}", "train.mlflow=true",
                     f"train.mlflow_tracking_uri=sqlite:///{blocker / 'm.db'}"])  # fmt: skip
    _err(capsys)
    assert code == 0 and "training goes on without MLflow" in caplog.text


def test_every_command_accepts_debug():
    parser = cli.build_parser()
    for command in cli.COMMANDS:
        if command != "search":  # search's actions parse their own arguments
            required = {"report": ["name"], "download": ["flickr8k", "--root", "x"]}.get(command, [])
            assert parser.parse_args([command, "--debug", *required]).debug is True
