"""DDP over 2 gloo processes on the CPU against one process on the whole batch.

The workers are started the way torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT in the environment), so they run the same code path as
`torchrun --nproc_per_node 2 -m finealign train ...`. Tolerance: float32 throughout; the global
batch's rows come in another order than one process's (the DistributedSampler interleaves the
shards), so sums are taken in another order and loss and gradients agree to rounding:
rtol 1e-4, atol 1e-6 (observed differences are ~1e-7).
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from finealign.config import EvalConfig, compose, validate
from finealign.engine.batching import epoch_loader
from finealign.engine.checkpoint import load_checkpoint
from finealign.engine.distributed import (
    SINGLE,
    GlobalBatchObjective,
    RankFailure,
    World,
    check_global_batch,
    first_occurrences,
    init_world,
    shard_range,
    wrap_ddp,
)
from finealign.engine.evaluate import evaluate
from finealign.engine.experiment import run_experiment, seed_everything
from finealign.engine.model import build_loss, build_model, fit_to_training_data, loss_extras
from finealign.engine.trainer import Trainer
from finealign.errors import ConfigError
from finealign.registry import create_dataset

WORLD = 2
TIMEOUT_S = 20  # every collective of the workers; a dead peer is noticed at once (its socket closes)
RTOL, ATOL = 1e-4, 1e-6
# (loss, aligner, scored as the whole matrix): a learnable temperature; global vectors and an
# intra-modal term; hinges with the hardest negative; a gallery-dependent aligner (two_stage: the
# whole matrix on every rank). The local loss is the default; "whole" asks for the whole matrix.
STEPS = (("infonce", "mean_max", False), ("infonce", "mean_max", True), ("cmc", "mean_max", False),
         ("cmc", "mean_max", True), ("triplet", "mean_max", False), ("cmc", "two_stage", False))  # fmt: skip


def step_overrides(loss: str, aligner: str = "mean_max") -> list[str]:
    # pairs=captions: an image can be drawn in both shards (its two captions), which the global
    # batch must keep once; the toy images have random real region counts, so token lengths differ.
    # triplet: the hardest negative from the first epoch (no all-negatives warm-up).
    return ["train=quick", "device=cpu", "data.num_train=20", "encoder.embed_dim=16", "train.batch_size=16",
            "train.pairs=captions", f"aligner={aligner}", f"loss={loss}", "output_dir=unused",
            *(["loss.warmup_epochs=0"] if loss == "triplet" else [])]  # fmt: skip


def fit_overrides(out: Path, *extra: str) -> list[str]:
    return ["train=quick", f"output_dir={out}", "train.progress=false", "eval.progress=false", "device=cpu",
            "data.num_train=64", "data.num_val=16", "data.num_test=32", "encoder.embed_dim=16",
            "train.batch_size=16", "train.pairs=captions", "train.epochs=2", "train.eval_every=1",
            "train.checkpoint=true", "train.save_model=true", "train.select=best", "train.tensorboard=false",
            f"train.dist_timeout_s={TIMEOUT_S}",
            *extra]  # fmt: skip


def loss_and_grads(loss_name: str, world: World, aligner: str = "mean_max", whole: bool = False) -> dict:
    """The loss of the first batch of epoch 0, every parameter's gradient after backward, the
    score pairs this rank's aligner computed and the path taken: through the trainer's DDP path
    with several ranks (or the whole-matrix objective, `whole`), or computed directly on the whole
    batch with one."""
    spec = validate(compose(overrides=step_overrides(loss_name, aligner)))
    seed_everything(spec.seed)
    split = create_dataset(spec.data[0], **spec.data[1]).split("train")
    model = build_model(spec, split.meta)
    fit_to_training_data(model, split)
    model.aligner.train()  # as the trainer has it (two_stage scores every pair while training)
    loss_fn = build_loss(spec)
    loss_fn.set_epoch(0)
    t = spec.train
    batch = next(iter(epoch_loader(split, model, mode=t.pairs, batch_size=t.batch_size, seed=spec.seed, epoch=0,
                                   rank=world.rank, world_size=world.size)))  # fmt: skip
    scored: list[int] = []
    model.aligner.register_forward_hook(lambda module, inputs, out: scored.append(out.numel()))
    path = "single"
    if world.distributed and not whole:
        trainer = Trainer(model, loss_fn, t, device=torch.device("cpu"), seed=spec.seed, progress=False, world=world)
        loss = trainer._global_batch_loss(batch, 0, 0, 0)
        path = trainer._ddp.module.last_path
    elif world.distributed:
        objective = wrap_ddp(GlobalBatchObjective(model, loss_fn, world, local_loss=False), torch.device("cpu"))
        loss = objective(batch.images, batch.texts, batch.item_ids, batch.caption_items())
        path = objective.module.last_path
    else:
        visual, text = model.encode_images(batch.images), model.encode_texts(batch.texts)
        loss = loss_fn(model.aligner(visual, text), batch.positives, loss_extras(visual, text))
    loss.backward()
    named = [*model.named_parameters(), *(("loss." + k, p) for k, p in loss_fn.named_parameters())]
    grads = {k: p.grad.clone() for k, p in named if p.grad is not None}
    return {"loss": float(loss.detach()), "grads": grads, "scored": sum(scored), "path": path}


EVAL_CASES = (("mean_max", 0), ("mean_max", 1), ("two_stage", 0))  # (aligner, max_items); 1: a rank scores nothing


def sharded_eval(aligner: str, max_items: int, world: World) -> dict[str, float]:
    """Test metrics of an untrained model (the same seed on every rank), encoded and scored by `world`."""
    spec = validate(compose(overrides=[*step_overrides("infonce"), f"aligner={aligner}", "data.num_test=24"]))
    seed_everything(spec.seed)
    dataset = create_dataset(spec.data[0], **spec.data[1])
    model = build_model(spec, dataset.split("train").meta)
    options = EvalConfig(batch_size=5, chunk_items=3, max_items=max_items, progress=False)
    return evaluate(
        model, dataset.split("test"), options, device=torch.device("cpu"), measure_memory=False, world=world
    )


# -- the workers (one per rank, started like torchrun starts them) -----------------------------


def _worker(rank: int, port: int, out: str) -> None:
    """Both ranks, one after the other: the first step of each loss, a short fit, the same fit
    stopped after one epoch and resumed, then a run in which rank 1 dies after its first validation. One start for all three (a process start and
    its imports cost several seconds on a busy machine); results are saved after each stage."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))  # fmt: skip
    torch.set_num_threads(1)
    result: dict = {}
    save = lambda: Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))  # noqa: E731
    try:
        # the process group every later run in this process reuses, with the timeout of all of them
        world = init_world("auto", TIMEOUT_S, torch.device("cpu"))
        result["steps"] = {case: loss_and_grads(case[0], world, case[1], whole=case[2]) for case in STEPS}
        result["fit"] = run_experiment(compose(overrides=fit_overrides(Path(out) / "ddp")))

        class Stop(Exception):
            pass

        def stop_after_first(epoch: int, metrics: dict) -> None:
            if epoch == 0:
                raise Stop  # both ranks, after rank 0 wrote the epoch's checkpoint

        try:
            run_experiment(compose(overrides=fit_overrides(Path(out) / "resumed")), on_validation=stop_after_first)
        except Stop:
            pass
        result["resumed"] = run_experiment(compose(overrides=fit_overrides(Path(out) / "resumed", "train.resume=auto")))
        result["eval"] = {case: sharded_eval(*case, world) for case in EVAL_CASES}
        save()

        def die_on_rank_1(epoch: int, metrics: dict) -> None:
            if rank == 1:
                os._exit(17)  # no goodbye: the peer finds out from its next collective

        started = time.perf_counter()
        try:
            run_experiment(
                compose(overrides=fit_overrides(Path(out) / "dying", "train.epochs=3")), on_validation=die_on_rank_1
            )
        except RankFailure as exc:
            result["error"] = str(exc)
        result["seconds"] = time.perf_counter() - started
    except BaseException:
        result["crash"] = traceback.format_exc()
    save()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(out: Path, timeout_s: float = 150) -> tuple[list[dict], list[int | None]]:
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(out))) for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():  # a hang is a failure: never leave the workers behind
            p.kill()
            p.join()
    files = [out / f"rank{r}.pkl" for r in range(WORLD)]
    assert all(f.is_file() for f in files), f"a worker saved nothing (exit codes {codes})"
    results = [pickle.loads(f.read_bytes()) for f in files]
    for r in results:
        assert "crash" not in r, r["crash"]
    return results, codes


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    results, codes = spawn(out)
    return out, results, codes


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", STEPS, ids=[f"{loss}-{aligner}-{'whole' if w else 'local'}" for loss, aligner, w in STEPS]
)
def test_two_ranks_give_the_loss_and_gradients_of_one_process_on_the_whole_batch(two_ranks, case):
    loss_name, aligner, whole = case
    _, results, _ = two_ranks
    single = loss_and_grads(loss_name, SINGLE, aligner)
    for rank, result in enumerate(results):
        step = result["steps"][case]
        assert step["path"] == ("whole" if whole or aligner == "two_stage" else "local"), f"rank {rank}"
        assert step["loss"] == pytest.approx(single["loss"], rel=RTOL, abs=ATOL), f"rank {rank}"
        assert set(step["grads"]) == set(single["grads"])
        for key, grad in single["grads"].items():
            torch.testing.assert_close(step["grads"][key], grad, rtol=RTOL, atol=ATOL, msg=f"rank {rank}: {key}")
        assert any(float(g.abs().max()) > 1e-3 for g in step["grads"].values())  # the gradients are not all ~0


@pytest.mark.slow
@pytest.mark.parametrize("loss_name", ["infonce", "cmc"])
def test_the_local_loss_scores_each_ranks_queries_against_the_global_batch_only(two_ranks, loss_name):
    """Whole matrix: every rank scores B_img × B_txt pairs. Local: rank r scores its n_r images
    against every caption and the other images against its B_txt / W captions."""
    _, results, _ = two_ranks
    whole = [r["steps"][(loss_name, "mean_max", True)]["scored"] for r in results]
    local = [r["steps"][(loss_name, "mean_max", False)]["scored"] for r in results]
    pairs = whole[0]  # B_img × B_txt, the same on every rank
    assert whole == [pairs] * WORLD and all(n < pairs for n in local)
    captions = 16  # train.batch_size: every caption drawn once
    images = pairs // captions
    # Σ_r [n_r·B_txt + (B_img − n_r)·B_txt/W] with Σ_r n_r = B_img
    assert sum(local) == images * captions + (WORLD - 1) * images * captions // WORLD


def test_the_compared_batch_straddles_ranks_with_shared_images_and_different_token_lengths():
    """What makes the equivalence test bite: an image drawn in both shards, and shards whose
    longest images differ (the gathered tokens must be padded and masked)."""
    spec = validate(compose(overrides=step_overrides("infonce")))
    split = create_dataset(spec.data[0], **spec.data[1]).split("train")
    model = build_model(spec, split.meta)
    shards = [next(iter(epoch_loader(split, model, mode="captions", batch_size=16, seed=spec.seed, epoch=0,
                                     rank=r, world_size=WORLD))) for r in range(WORLD)]  # fmt: skip
    whole = next(iter(epoch_loader(split, model, mode="captions", batch_size=16, seed=spec.seed, epoch=0)))
    assert sorted(torch.cat([s.caption_ids for s in shards]).tolist()) == sorted(whole.caption_ids.tolist())
    assert set(shards[0].item_ids.tolist()) & set(shards[1].item_ids.tolist())
    assert shards[0].images["tokens"].shape[1] != shards[1].images["tokens"].shape[1]


@pytest.mark.slow
def test_a_two_rank_fit_ends_with_the_metrics_of_one_process(two_ranks, tmp_path):
    out, results, _ = two_ranks
    single = run_experiment(compose(overrides=fit_overrides(tmp_path / "single")))
    for rank, result in enumerate(results):
        ddp = result["fit"]
        for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "best_val_rsum", "steps"):
            assert ddp[key] == single[key], f"rank {rank}: {key} {ddp[key]} vs {single[key]}"
        assert ddp["final_loss"] == pytest.approx(single["final_loss"], rel=RTOL)
    # rank 0 alone wrote the run: one directory, the trained weights of one process
    assert not (out / "ddp-1").exists()
    saved = json.loads((out / "ddp" / "results.json").read_text())
    assert saved["world_size"] == WORLD and saved["metrics"]["rsum"] == single["rsum"]
    ddp_weights = load_checkpoint(out / "ddp" / "model.pt")["model"]
    for key, value in load_checkpoint(tmp_path / "single" / "model.pt")["model"].items():
        torch.testing.assert_close(ddp_weights[key], value, rtol=1e-3, atol=1e-5, msg=key)


@pytest.mark.slow
def test_a_two_rank_run_resumes_from_rank_0s_checkpoint_as_if_never_stopped(two_ranks):
    out, results, _ = two_ranks
    for result in results:
        straight, resumed = result["fit"], result["resumed"]
        assert resumed["epochs"] == straight["epochs"] == 2 and resumed["steps"] == straight["steps"]
        assert resumed["final_loss"] == straight["final_loss"] and resumed["rsum"] == straight["rsum"]
    straight_weights = load_checkpoint(out / "ddp" / "model.pt")["model"]
    for key, value in load_checkpoint(out / "resumed" / "model.pt")["model"].items():
        torch.testing.assert_close(value, straight_weights[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("case", EVAL_CASES, ids=[f"{a}-max{m}" for a, m in EVAL_CASES])
def test_sharded_evaluation_gives_the_metrics_of_one_process(two_ranks, case):
    _, results, _ = two_ranks
    single = sharded_eval(*case, SINGLE)
    assert single["num_items"] == (case[1] or 24)
    for result in results:
        sharded = result["eval"][case]
        for key, value in single.items():
            if key not in ("score_latency_ms", "score_prepare_ms"):  # timings of this run
                assert sharded[key] == value, key


@pytest.mark.slow
def test_a_dying_rank_stops_the_other_with_a_clear_error(two_ranks):
    _, results, codes = two_ranks
    assert codes[1] == 17 and "seconds" not in results[1]  # rank 1 died in the third run
    assert codes[0] == 0, "rank 0 did not stop by itself"
    message = results[0].get("error")
    assert message is not None, "rank 0 went on training without its peer"
    assert "rank 0 of 2" in message and "another rank died" in message and f"dist_timeout_s={TIMEOUT_S}" in message
    assert results[0]["seconds"] < 2 * TIMEOUT_S


def test_a_world_size_that_does_not_divide_the_global_batch_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.batch_size=10 .* not divisible by the world size 4"):
        check_global_batch(10, 4)
    check_global_batch(12, 4)
    check_global_batch(10, 1)


def test_run_experiment_refuses_an_indivisible_batch_before_starting_the_process_group(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # nothing listens: failing later would hang on the rendezvous
    with pytest.raises(ConfigError, match="batch_size=16 .* world size 3"):
        run_experiment(compose(overrides=fit_overrides(tmp_path)))


def test_first_occurrences_and_shards_match_slow_references():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids = torch.randint(0, 7, (int(torch.randint(1, 15, (1,), generator=g)),), generator=g)
        expected, seen = [], set()
        for k, v in enumerate(ids.tolist()):
            if v not in seen:
                seen.add(v)
                expected.append(k)
        assert first_occurrences(ids).tolist() == expected
    for count in range(0, 12):
        for size in range(1, 5):
            ranges = [shard_range(count, World(rank=r, size=size)) for r in range(size)]
            covered = [i for lo, hi in ranges for i in range(lo, hi)]
            assert covered == list(range(count))
            assert max(hi - lo for lo, hi in ranges) - min(hi - lo for lo, hi in ranges) <= 1


def test_world_size_without_torchruns_other_variables_is_a_config_error_and_off_trains_alone(monkeypatch, caplog):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="RANK, MASTER_ADDR, MASTER_PORT is not: launch with torchrun"):
        init_world("auto", 5, torch.device("cpu"))
    with caplog.at_level("WARNING"):
        assert init_world("off", 5, torch.device("cpu")) is SINGLE
    assert "train.distributed=off" in caplog.text
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_world("auto", 5, torch.device("cpu")) is SINGLE
