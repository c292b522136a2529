"""Memory and disk limits (issue 26): evaluation, training batches and profiles estimate their
memory from the shapes and refuse with the numbers before allocating (FINEALIGN_MEMORY_BYTES
stands in for a small machine); writers check free disk space first and turn a full disk into a
DiskFullError that leaves no half entry."""

import errno
import shutil
from collections import namedtuple

import numpy as np
import pytest
import torch

from finealign.cache import build as build_module
from finealign.engine.experiment import run_experiment
from finealign.errors import DiskFullError, ResourceError
from finealign.profiling.inputs import ProblemShape
from finealign.profiling.measure import ProfileSettings
from finealign.profiling.pipeline import run_profile
from finealign.resources import available_memory, check_disk, preallocate
from tests.hostile.test_runs import toy

GIB = 2**30


def test_the_memory_a_machine_has_is_known_and_can_be_set():
    known = available_memory("cpu")  # /proc/meminfo (and a cgroup limit) on Linux
    assert known is None or known > 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINEALIGN_MEMORY_BYTES", "1e6")
        assert available_memory("cpu") == 1_000_000


def test_a_training_batch_whose_scores_cannot_fit_is_refused_before_the_first_step(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEALIGN_MEMORY_BYTES", str(6 * 2**20))  # a 1024² fp32 matrix and its gradient: 8 MiB
    with pytest.raises(ResourceError, match=r"batch of 1024 images × 1024 captions needs at least .* GiB .*scores"
                                            r".*lower train.batch_size"):  # fmt: skip
        run_experiment(toy(tmp_path, "train.batch_size=1024", "data.num_train=1024", "data.captions_per_item=1"))
    assert not (tmp_path / "train.json").exists()


def test_an_evaluation_gallery_whose_matrix_cannot_fit_is_refused_with_the_numbers(tmp_path, monkeypatch):
    from finealign.engine import evaluate as evaluation

    sizes = []
    real = evaluation.check_scoring_fits

    def small_machine(*args, **kwargs):
        sizes.append(args[1:3])
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FINEALIGN_MEMORY_BYTES", "1000")  # only the test evaluation sees a small machine
            real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "check_scoring_fits", small_machine)
    with pytest.raises(RuntimeError, match=r"model.pt and train.json are saved.*ResourceError: scoring the gallery "
                                           r"needs at least .*score matrix 16×32"):  # fmt: skip
        run_experiment(toy(tmp_path, "train.epochs=1", "train.eval_every=0"))
    assert sizes == [(16, 32)] and (tmp_path / "model.pt").is_file()


def test_a_cpu_token_block_is_part_of_the_estimate():
    from finealign.engine.evaluate import check_scoring_fits
    from finealign.registry import create_aligner
    from finealign.tokens import TokenBatch

    aligner = create_aligner("mean_max", chunk_visual=64, chunk_text=256)
    visual = TokenBatch(torch.zeros(100, 400, 4), torch.ones(100, 400, dtype=torch.bool))
    text = TokenBatch(torch.zeros(300, 200, 4), torch.ones(300, 200, dtype=torch.bool))
    block = 64 * 256 * 400 * 200 * 2  # ~2.4 GiB of bf16 token similarities at least
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINEALIGN_MEMORY_BYTES", str(block))
        check_scoring_fits(aligner, 100, 300, chunk_items=256, device=torch.device("cpu"))  # no tokens yet: fits
        with pytest.raises(ResourceError, match=r"a token block 64×256×400×200 2.44 GiB"):
            check_scoring_fits(aligner, 100, 300, chunk_items=256, device=torch.device("cpu"), tokens=(visual, text))


def test_a_profile_too_large_for_the_machine_is_refused_before_any_input_is_made(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEALIGN_MEMORY_BYTES", str(GIB))
    settings = ProfileSettings(device="cpu", repeats=1, warmup=0, flops=False)
    # 3 sets × (20000·49 + 100000·32) tokens × 256 × 4 bytes (+ masks) = 11.97 GiB; scores 2e9 × 4 bytes = 7.45 GiB
    with pytest.raises(ResourceError, match=r"this profile needs at least 19.42 GiB \(3 input set\(s\) .* 11.97 GiB, "
                                            r"scores 20000×100000 7.45 GiB\) but cpu has 1.00 GiB free"):  # fmt: skip
        run_profile(["mean_max"], ProblemShape(nv=20000, nt=100000, lv=49, lt=32, dim=256), settings,
                    out_dir=tmp_path / "p", trace=False)  # fmt: skip
    # a scaling value out of reach is refused before the first size is measured
    with pytest.raises(ResourceError, match="this profile needs"):
        run_profile(["mean_max"], ProblemShape(nv=4, nt=8), settings, out_dir=tmp_path / "q", trace=False,
                    scaling_axes=["n"], scaling_values={"n": [4, 10**6]})  # fmt: skip
    assert not (tmp_path / "q").exists()


# -- disk ---------------------------------------------------------------------------------------------
Usage = namedtuple("Usage", "total used free")


def test_a_writer_checks_free_space_first(tmp_path, monkeypatch):
    check_disk(tmp_path / "not" / "yet", 1, "a small file")  # the nearest existing parent is asked
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * GIB, 10 * GIB - 2**20, 2**20))
    with pytest.raises(DiskFullError, match=r"gallery .* needs .* GiB on disk but .* has 0.00 GiB free"):
        from finealign.search import write_gallery

        write_gallery(tmp_path / "g", np.ones((1000, 10, 64), np.float16), np.ones((1000, 10), bool), None,
                      modality="text", feature_source="t", indexes={})  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_preallocation_turns_a_full_disk_into_an_error_at_allocation(tmp_path, monkeypatch):
    path = tmp_path / "big.npy"
    np.lib.format.open_memmap(path, "w+", np.float16, (64, 64))
    preallocate(path)  # a real file system with room: fine

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.posix_fallocate", full)
    with pytest.raises(OSError, match="No space left"):
        preallocate(path)


def test_a_cache_build_that_fills_the_disk_leaves_no_half_entry(tmp_path, monkeypatch):
    from tests.data.fake_karpathy import make_fake_karpathy

    root = make_fake_karpathy(tmp_path / "flickr8k")

    def encoded(encoder, count, get, **kwargs):
        n = count
        return [torch.zeros(n, 3, 8)], [torch.ones(n, 3, dtype=torch.bool)], np.zeros((n, 8), np.float32)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(build_module, "encode_items", encoded)
    monkeypatch.setattr(build_module, "preallocate", full_disk)  # the disk fills as the first map is reserved
    with pytest.raises(DiskFullError, match="the disk filled while writing the feature cache entry"):
        build_module.build_feature_cache("flickr8k", {"root": str(root)}, "test", "precomputed",
                                         {"modality": "vision", "in_dim": 8}, "precomputed",
                                         {"modality": "text", "in_dim": 8}, cache_dir=tmp_path / "cache")  # fmt: skip
    assert list((tmp_path / "cache").iterdir()) == []  # no entry, no temporary folder


def test_a_checkpoint_that_fills_the_disk_keeps_the_last_good_one_and_no_half_file(tmp_path, monkeypatch):
    from finealign.engine import checkpoint

    path = checkpoint.save_checkpoint(tmp_path / "last.pt", {"epoch": 1})

    def full(state, target):
        open(target, "wb").write(b"half")  # what a write that ran out of space leaves
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")  # fmt: skip

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(DiskFullError, match="the disk filled while writing the checkpoint last.pt"):
        checkpoint.save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(path)["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
