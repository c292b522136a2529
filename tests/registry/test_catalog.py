"""The generated catalog behind `finealign list` matches the registries, and `finealign --help`,
`list` and completion import no torch."""

import subprocess
import sys

from finealign.registry.catalog import BUILTINS, current
from tests.conftest import REPO


def test_catalog_equals_the_registrations():
    assert BUILTINS == current(), "stale: run `python -m finealign.registry.catalog` and commit the file"


def test_help_list_and_completion_do_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "from finealign.cli.main import main\n"
        "for argv in (['--help'], ['list'], ['list', 'aligners', 'mean_*'], ['__complete', 'train', 'aligner='],"
        " ['__complete', 'train', 'train.l'], ['__complete', 'tr']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "    assert out.getvalue(), argv\n"
        "print('torch' in sys.modules)\n"
    )
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout
