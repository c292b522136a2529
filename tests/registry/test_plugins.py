"""Third-party plugins through real Python entry points."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from finealign.registry import Registry
from tests.conftest import REPO, random_batch

PLUGIN_SRC = REPO / "examples" / "plugin_aligner"


def write_distribution(root: Path, group: str, name: str, value: str, module_code: str, module: str):
    """A minimal installed distribution on disk: a module plus a .dist-info with entry_points.txt."""
    (root / f"{module}.py").write_text(textwrap.dedent(module_code))
    info = root / "tmp_widget_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tmp-widget-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {value}\n")


def test_entry_point_on_temporary_distribution_is_lazy(tmp_path, monkeypatch):
    write_distribution(
        tmp_path,
        "finealign.widgets_test",
        "shiny",
        "tmp_widget_mod:Shiny",
        '''
        LOADED = True
        class Shiny:
            """A shiny plugin widget."""
            def __init__(self, colour="red"):
                self.colour = colour
        ''',
        "tmp_widget_mod",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widgets", entry_point_group="finealign.widgets_test")
    assert reg.list() == ["shiny"]
    # Listing does not import the plugin (fsspec-style laziness)...
    assert "tmp_widget_mod" not in sys.modules
    assert reg.entry("shiny").source == "plugin:tmp-widget-plugin"
    # ...building does.
    widget = reg.build("shiny", colour="blue")
    assert widget.colour == "blue" and "tmp_widget_mod" in sys.modules
    assert reg.describe("shiny") == "A shiny plugin widget."
    sys.modules.pop("tmp_widget_mod", None)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    """The example plugin package built and pip-installed for real into a scratch folder (once)."""
    target = tmp_path_factory.mktemp("plugin") / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(PLUGIN_SRC)], check=True, capture_output=True)  # fmt: skip
    return target


@pytest.mark.slow
def test_pip_installed_plugin_aligner_is_listed_and_scores(installed_plugin, tmp_path):
    """The installed plugin, used from a fresh process."""
    env_path = f"{installed_plugin}"
    listing = subprocess.run(
        [sys.executable, "-m", "finealign.cli.main", "list", "aligners"],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "max_max" in listing and "plugin:finealign-maxmax" in listing
    code = textwrap.dedent(
        """
        import torch, sys
        sys.path.insert(0, {!r})
        from tests.conftest import random_batch
        from finealign.registry import create_aligner
        g = torch.Generator().manual_seed(0)
        v, t = random_batch(3, 4, 5, generator=g), random_batch(2, 3, 5, generator=g)
        s = create_aligner("max_max", chunk_visual=2)(v, t)
        torch.save(s, {!r})
        """.format(str(REPO), str(tmp_path / "s.pt"))
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    got = torch.load(tmp_path / "s.pt")
    g = torch.Generator().manual_seed(0)
    v, t = random_batch(3, 4, 5, generator=g), random_batch(2, 3, 5, generator=g)
    vn = torch.nn.functional.normalize(v.tokens, dim=-1)
    tn = torch.nn.functional.normalize(t.tokens, dim=-1)
    for i in range(3):
        for j in range(2):
            best = max(float(vn[i, a] @ tn[j, b]) for a in range(4) for b in range(3) if v.mask[i, a] and t.mask[j, b])
            assert abs(float(got[i, j]) - best) < 1e-5


@pytest.mark.slow
def test_installed_plugin_brings_its_configs_train_sweep_profile_and_contract(installed_plugin, tmp_path):
    """The example plugin, pip-installed into a scratch folder: `train aligner=max_max`, a 2-trial
    sweep file it ships, `profile`, and its own contract test — with no copy of finealign's configs."""
    env = {
        "PYTHONPATH": str(installed_plugin),
        "PATH": "/usr/bin:/bin",
        "FINEALIGN_PROGRESS": "0",
        "HOME": str(tmp_path),
    }

    def finealign(*args):
        done = subprocess.run([sys.executable, "-m", "finealign.cli.main", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    trained = finealign("train", "aligner=max_max", "train=quick", "train.epochs=1", "data.num_train=32",
                        "data.num_val=16", "data.num_test=16", "output_dir=run", "--json")  # fmt: skip
    assert "rsum" in trained and (tmp_path / "run" / "results.json").is_file()
    swept = finealign("sweep", "sweep=max_max_toy", "--no-progress")
    assert "max_max" in swept and "global" in swept and "this worker: 2 complete" in swept
    profiled = finealign("profile", "aligners=max_max", "max_max.chunk_text=128", "nv=4", "nt=6", "repeats=2",
                         "warmup=0", "scaling=none", "trace=false", "flops=false", "out=prof")  # fmt: skip
    assert "max_max" in profiled
    own = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGIN_SRC / "tests")],
                         cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert own.returncode == 0 and "1 passed" in own.stdout, own.stdout[-2000:]
