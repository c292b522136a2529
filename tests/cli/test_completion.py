"""Shell completion: candidates from the parser and the config tree, and the real bash script."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from finealign.cli.completion import candidates
from finealign.cli.main import build_parser
from finealign.cli.main import main as cli_main


def test_candidates_cover_commands_flags_keys_and_group_choices():
    parser = build_parser()
    assert candidates(["tr"], parser) == ["train"]
    assert "--multirun" in candidates(["train", "--m"], parser)
    assert candidates(["train", "aligner=me"], parser) == ["aligner=mean_max"]
    assert candidates(["train", "+loss=tr"], parser) == ["+loss=triplet"]
    assert "train." in candidates(["train", "tra"], parser) and "train=" in candidates(["train", "tra"], parser)
    assert "train.lr=" in candidates(["train", "train.l"], parser)
    assert candidates(["profile", "mean_max.dir"], parser) == ["mean_max.direction="]
    assert "splits=" in candidates(["cache", "sp"], parser)
    assert candidates(["nosuch", "x"], parser) == []


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_script_completes_through_the_installed_command(tmp_path, capsys):
    assert cli_main(["-sc", "install=bash"]) == 0
    script = tmp_path / "finealign.bash"
    script.write_text(capsys.readouterr().out)
    shim = tmp_path / "bin" / "finealign"  # the command the script calls, on PATH
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m finealign.cli.main "$@"\n')
    shim.chmod(0o755)
    probe = f'source {script}; COMP_WORDS=(finealign train aligner=ha); COMP_CWORD=2; _finealign_complete; echo "${{COMPREPLY[@]}}"'
    env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"), *sys.path])}  # fmt: skip
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == "aligner=hard", out.stderr
    assert cli_main(["--shell-completion", "install=fish"]) == 2
