"""The documentation's toy commands run as written.

Which commands: every line of a ```bash block in README.md and docs/*.md that starts with
`finealign ` and mentions `toy` (in the command or its comment), except in a block that installs
something (`pip install`: it needs another environment). They run in the order of their file,
each file in its own empty working directory (a later command may use what an earlier one wrote,
as a reader following the page would), through a `finealign` on PATH that runs this checkout.
A failure names the doc file and line. To add a command to the check, write it in a ```bash
block with `toy` data; to keep one out, move it out of such a block or drop `toy` from its line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TIMEOUT_S = 180  # per command; the toy commands take seconds to tens of seconds on 2 idle CPU cores


def doc_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command) of the toy commands of one Markdown file (see the module docstring)."""
    found: list[tuple[int, str]] = []
    block: list[tuple[int, str]] | None = None
    lang = ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if block is None:
                block, lang = [], stripped[3:].strip()
            else:
                if lang == "bash" and not any("pip install" in text for _, text in block):
                    found += [(n, t) for n, t in block if t.startswith("finealign ") and "toy" in t]
                block = None
            continue
        if block is not None:
            block.append((number, stripped))
    return found


def command_text(line: str) -> str:
    """The command without its trailing `# comment` (a `#` inside quotes is kept)."""
    return re.sub(r"\s+#(?=(?:[^'\"]|'[^']*'|\"[^\"]*\")*$).*$", "", line).strip()


def test_the_extractor_finds_toy_commands_in_bash_blocks_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\nfinealign train   # toy data\nfinealign train data=flickr8k\n```\n"
        "```python\nfinealign train data=toy\n```\n"
        "```bash\npip install ./plugin\nfinealign sweep sweep=plugin_toy\n```\n"
        "finealign train data=toy\n"
    )
    assert doc_commands(page) == [(2, "finealign train   # toy data")]
    assert command_text("finealign train   # toy data") == "finealign train"
    assert command_text("finealign train x='a # b'  # c") == "finealign train x='a # b'"
    assert any(doc_commands(p) for p in DOCS), "no toy command found in the docs: the extractor is broken"


@pytest.fixture
def shell_env(tmp_path):
    """PATH with a `finealign` that runs this checkout's code under this interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "finealign"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m finealign "$@"\n')
    shim.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(REPO / "src"),
        "FINEALIGN_PROGRESS": "0",
        "HOME": str(tmp_path),
    }


@pytest.mark.slow
@pytest.mark.docs
@pytest.mark.parametrize("doc", [p for p in DOCS if doc_commands(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_doc_toy_commands_run_as_written(doc, tmp_path, shell_env):
    cwd = tmp_path / "work"
    cwd.mkdir()
    timings = []
    for number, line in doc_commands(doc):
        command = command_text(line)
        start = time.perf_counter()
        try:
            done = subprocess.run(["bash", "-c", command], cwd=cwd, env=shell_env, capture_output=True, text=True,
                                  timeout=TIMEOUT_S)  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail(f"{doc.relative_to(REPO)}:{number}: `{command}` ran past {TIMEOUT_S} s")
        timings.append(f"{doc.name}:{number} {time.perf_counter() - start:.1f}s")
        if done.returncode != 0:
            pytest.fail(f"{doc.relative_to(REPO)}:{number}: `{command}` exited {done.returncode}\n"
                        f"{(done.stderr or done.stdout)[-3000:]}")  # fmt: skip
    print("; ".join(timings))
