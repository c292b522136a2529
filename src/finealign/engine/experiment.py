"""One experiment end to end: validate the config, build, train, evaluate, save results; and the
evaluation of a saved model (`finealign eval ckpt=...`)."""

from __future__ import annotations

import json
import os
import random
import resource
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from finealign.config import SEARCHPATH_KEY, ExperimentSpec, group_options, searchpath_roots, validate
from finealign.data.sanity import check_splits
from finealign.devices import resolve_device
from finealign.engine.checkpoint import load_checkpoint, save_checkpoint
from finealign.engine.distributed import (
    SINGLE,
    World,
    broadcast_object,
    check_global_batch,
    check_ranks_agree,
    env_world_size,
    failures_named,
    init_world,
    rank_device,
)
from finealign.engine.evaluate import evaluate
from finealign.engine.job_log import JobLog
from finealign.engine.model import RetrievalModel, build_loss, build_model, fit_to_training_data
from finealign.engine.provenance import provenance
from finealign.engine.results import save_results
from finealign.engine.tracking import log_final_metrics
from finealign.engine.trainer import Trainer
from finealign.errors import ConfigError
from finealign.kept import keep
from finealign.overrides import apply as apply_config_overrides
from finealign.registry import create_dataset

GROUPS = ("encoder", "aligner", "loss", "data", "train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def memory_metrics(device: torch.device) -> dict[str, float]:
    """train_peak_mem_mb: the CUDA allocator's peak since the run started (NaN on the CPU, where
    no allocator peak of a whole run exists: scoring memory is `score_peak_mem_mb`, measured from
    torch's allocation log). process_peak_rss_mb: the process's peak resident set size, labelled as
    such — it only ever rises and covers whatever the process did before, so it is no cost metric."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "train_peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan"),
        "process_peak_rss_mb": rss / 2**20 if sys.platform == "darwin" else rss / 1024,  # bytes on macOS, KiB on Linux
    }


CLAIM_FILE = ".finealign-run"  # created exclusively by the run that owns the directory


def claim_output_dir(cfg: DictConfig) -> Path:
    """Fix the run's directory once (a `${now:...}` in it resolves at this moment) and own it: the
    directory is claimed by creating CLAIM_FILE exclusively (O_EXCL), so two runs — given one
    output_dir, or started in the same second with the default timestamped one — never share a
    directory: the one that loses moves to `<dir>-1`, `<dir>-2`, ... and says so. A directory
    that holds results is never reused; one whose claimant is gone (its process on this host no
    longer exists: killed, or failed and exited) without results is taken over, so a re-run of a
    killed run (a protocol's final, a sweep's re-queued trial) writes where the first one would
    have. A run that resumes (train.resume set) keeps its directory. An unwritable directory is a
    ConfigError."""
    target = Path(str(cfg.output_dir))
    resuming = OmegaConf.select(cfg, "train.resume") is not None
    claimed, n = target, 0
    while not _claim(claimed, exclusive=not resuming):
        n += 1
        claimed = target.with_name(f"{target.name}-{n}")
    if claimed != target:
        warnings.warn(f"{target} already holds results or belongs to another run; this run writes to {claimed}",
                      UserWarning, stacklevel=3)  # fmt: skip
    cfg.output_dir = str(claimed)
    return claimed


def _claim(directory: Path, *, exclusive: bool) -> bool:
    """Create `directory` and its claim file; False when another run owns it."""
    if exclusive and (directory / "results.json").exists():
        return False
    claim = directory / CLAIM_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(claim, os.O_CREAT | os.O_WRONLY | (os.O_EXCL if exclusive else os.O_TRUNC), 0o644)
        except FileExistsError:
            if not directory.is_dir():
                raise
            if not _take_over(directory):
                return False
            fd = os.open(claim, os.O_WRONLY | os.O_TRUNC)
    except FileExistsError:
        raise ConfigError(
            f"output_dir {directory} is not writable (a file is in the way); set output_dir=..."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"output_dir {directory} is not writable ({exc.strerror or exc}); set output_dir=..."
        ) from exc
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
    return True


def _take_over(directory: Path) -> bool:
    """True when the run that claimed `directory` is gone (its process on this host no longer
    exists) and this run won the right to take its place (one exclusive marker per dead claimant,
    so two re-runs never both take it)."""
    try:
        claim = json.loads((directory / CLAIM_FILE).read_text())
    except (OSError, ValueError):
        return False  # being written this instant, or unreadable: leave it to its owner
    pid = claim.get("pid")
    if claim.get("host") != socket.gethostname() or not isinstance(pid, int) or _alive(pid):
        return False
    marker = directory / f"{CLAIM_FILE}.taken-{pid}-{claim.get('started')}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def labels(spec: ExperimentSpec) -> dict[str, Any]:
    return {
        "aligner": spec.aligner[0],
        "method": spec.method,
        "loss": spec.loss[0],
        "vision": spec.vision[0],
        "text": spec.text[0],
        "data": spec.data[0],
        "embed_dim": spec.embed_dim,
        "seed": spec.seed,
    }


def _test_metrics(
    model: RetrievalModel,
    spec: ExperimentSpec,
    split: Any,
    device: torch.device,
    output_dir: Path,
    world: World = SINGLE,
) -> dict[str, float]:
    ranks: dict[str, Any] = {}
    metrics = evaluate(model, split, spec.eval, device=device, amp=spec.train.amp, ranks=ranks, world=world)
    if spec.eval.save_ranks and world.is_main:
        save_ranks(output_dir / "ranks.npz", ranks, split=spec.eval.split)
    return metrics


def save_ranks(path: Path, ranks: dict[str, Any], *, split: str) -> None:
    """Every test query's rank: what `finealign.protocol.stats` resamples for paired bootstraps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, i2t=ranks["i2t"].numpy().astype(np.int64), t2i=ranks["t2i"].numpy().astype(np.int64),
        caption_item=ranks["caption_item"].numpy().astype(np.int64), split=np.array(split),
    )  # fmt: skip


def _begin_run(
    cfg: DictConfig, world: World = SINGLE, job_log: tuple[JobLog, str] | None = None
) -> tuple[ExperimentSpec, Path, torch.device, Any]:
    """What every run does first: validate (every ConfigError before any data is read), claim a
    fresh writable run directory (before training: a run must not be lost to a late write error),
    start the job log file in it (`job_log`: the log and its file name), pick the device, seed,
    and open the dataset. With several ranks, rank 0 claims the directory and tells the others."""
    validate(cfg)
    claimed: Path | None = None
    if world.is_main:
        claimed = claim_output_dir(cfg)
        check_writable(claimed)
        keep("run", f"run directory {claimed}")
        if job_log is not None:
            job_log[0].start(claimed / job_log[1])
    out_dir = Path(broadcast_object(str(claimed), world))
    cfg.output_dir = str(out_dir)
    spec = validate(cfg)  # again: output_dir is now fixed
    device = rank_device(resolve_device(spec.device)) if world.distributed else resolve_device(spec.device)
    seed_everything(spec.seed)
    dname, doptions = spec.data
    return spec, out_dir, device, create_dataset(dname, **doptions)


def run_experiment(
    cfg: DictConfig,
    *,
    on_validation: Callable[[int, dict], None] | None = None,
    overrides: Iterable[str] | None = None,
    hydra: DictConfig | None = None,
) -> dict:
    """Train and evaluate the experiment `cfg` (as composed by finealign.config.compose).

    on_validation(epoch, val_metrics) is called after each validation (sweeps prune by raising from it).
    Returns the test-split metrics (i2t/t2i R@1/5/10, rsum, medr, meanr, score_latency_ms) plus
    train_peak_mem_mb, process_peak_rss_mb, train_time_s, final_loss, epochs, steps and
    best_val_rsum, and writes results.json / results.csv / ranks.npz (and model.pt, when
    train.save_model) into the run's directory: cfg.output_dir, or a fresh sibling of it when that
    already holds results (`claim_output_dir`). results.json carries the provenance block
    (`engine.provenance`); `overrides` are the command-line overrides it records, `hydra` the
    `hydra:` node of the composition (finealign.config.compose_with_hydra) for `.hydra/hydra.yaml`.
    Log records also go to `<run dir>/train.log` while the run lasts.

    Launched by torchrun (WORLD_SIZE > 1, train.distributed=auto), every rank runs this: they train
    one model with DDP over the global batch, share the evaluation, and rank 0 alone writes files;
    every rank returns the same metrics. A rank whose peers fail stops with RankFailure.
    """
    world = _start_world(cfg)
    with failures_named(world), JobLog() as job_log:
        return _run_experiment(cfg, world, on_validation, overrides, hydra, job_log)


def _start_world(cfg: DictConfig) -> World:
    """The process group of a torchrun launch (SINGLE otherwise), after the checks that need no peer."""
    if env_world_size() <= 1:
        return SINGLE
    spec = validate(cfg)
    if spec.train.distributed == "off":
        return init_world("off", spec.train.dist_timeout_s, torch.device("cpu"))
    check_global_batch(spec.train.batch_size, env_world_size())
    # the rank's own GPU before the group is made: nccl binds each rank to the device it is given
    world = init_world(spec.train.distributed, spec.train.dist_timeout_s, rank_device(resolve_device(spec.device)))
    with failures_named(world):
        check_ranks_agree(OmegaConf.to_container(cfg, resolve=True), world)
    return world


def _run_experiment(
    cfg: DictConfig,
    world: World,
    on_validation: Callable[[int, dict], None] | None,
    overrides: Iterable[str] | None,
    hydra: DictConfig | None,
    job_log: JobLog,
) -> dict:
    spec, out_dir, device, dataset = _begin_run(cfg, world, (job_log, "train.log"))
    train_split = dataset.split("train")
    has_val = getattr(dataset, "has_split", lambda name: True)("val")
    val_split = dataset.split("val") if has_val and spec.train.eval_every else None
    test_split = dataset.split(spec.eval.split)
    used = {"train": train_split, **({"val": val_split} if val_split is not None else {}), spec.eval.split: test_split}
    check_splits(used, allow_shared_images=spec.allow_shared_images)

    model = build_model(spec, train_split.meta)
    fit_to_training_data(model, train_split)
    model = model.to(device)
    loss = build_loss(spec).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    snapshot: dict[str, Any] = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "data_meta": _plain(train_split.meta),
    }
    trainer = Trainer(
        model,
        loss,
        spec.train,
        device=device,
        seed=spec.seed,
        output_dir=spec.output_dir,
        eval_cfg=spec.eval,
        config_snapshot=snapshot,
        progress=spec.train.progress,
        world=world,
        run_labels=labels(spec),
    )
    result = trainer.fit(train_split, val_split, on_validation=on_validation)
    trained = {
        "train_time_s": result.train_time_s,
        "final_loss": result.final_loss,
        "epochs": result.epochs_run,
        "steps": result.steps,
        "best_val_rsum": result.best["rsum"] if result.best else float("nan"),
        "params_trainable": sum(p.numel() for p in [*model.parameters(), *loss.parameters()] if p.requires_grad),
    }
    extra: dict[str, Any] = {
        "history": result.history, "epoch_losses": result.epoch_losses, "curves": result.curves,
        "device": str(device),
        "output_dir": str(out_dir), "provenance": provenance(device, overrides),
        **({"world_size": world.size} if world.distributed else {}),
        "tracking_failures": trainer.tracking_failures,  # sinks that failed and were dropped (training went on)
    }  # fmt: skip
    # The trained model and what training measured are kept before the test evaluation runs, so a
    # failing evaluation costs the evaluation, never the training.
    if world.is_main:
        if spec.train.save_model:
            save_checkpoint(out_dir / "model.pt", {"model": model.state_dict(), **snapshot})
            keep("model", f"trained model {out_dir / 'model.pt'}")
        write_hydra_record(out_dir, cfg, overrides, hydra, job="train")
        save_results(out_dir, trained, labels=labels(spec), config=snapshot["config"], extra=extra, stem="train")
        keep("train", f"training record {out_dir / 'train.json'}")
    try:
        metrics = _test_metrics(model, spec, test_split, device, out_dir, world)
    except Exception as exc:  # under torchrun, a failed collective here becomes RankFailure (run_experiment)
        kept = "model.pt and train.json" if spec.train.save_model else "train.json (train.save_model=false: no weights)"
        hint = "; re-run it with `finealign eval ckpt=...`" if spec.train.save_model else ""
        raise RuntimeError(
            f"training finished and {kept} are saved in {out_dir}, but the test evaluation failed: "
            f"{type(exc).__name__}: {exc}{hint}"
        ) from exc
    out = {**metrics, **memory_metrics(device), **trained}
    if world.is_main:
        save_results(out_dir, out, labels=labels(spec), config=snapshot["config"], extra=extra)
        failed = log_final_metrics(trainer.tracking, out)  # after the results are safe on disk
        if failed:  # recorded: results.json says which tracking is incomplete
            extra["tracking_failures"] = [*extra["tracking_failures"], *failed]
            save_results(out_dir, out, labels=labels(spec), config=snapshot["config"], extra=extra)
    return out


def write_hydra_record(
    directory: Path,
    cfg: DictConfig,
    overrides: Iterable[str] | None,
    hydra: DictConfig | None = None,
    job: str = "finealign",
) -> None:
    """`.hydra/config.yaml` (the composed config), `.hydra/overrides.yaml` and `.hydra/hydra.yaml`
    (Hydra's own `hydra:` node: search path, group choices, overrides, versions), as a Hydra run
    leaves them. Without `hydra` (a library call), hydra.yaml holds what is known: the run dir,
    the overrides, the versions and the working directory."""
    hydra_dir = directory / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    overrides = list(overrides or [])
    (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    (hydra_dir / "hydra.yaml").write_text(
        OmegaConf.to_yaml({"hydra": hydra_run_node(directory, overrides, hydra, job)})
    )


def hydra_run_node(directory: Path, overrides: list[str], hydra: DictConfig | None, job: str) -> DictConfig:
    """The `hydra:` node of one run as Hydra's own run would record it (the run's directory and
    job name filled in)."""
    import hydra as hydra_package

    node = OmegaConf.create({}) if hydra is None else hydra.copy()
    with open_dict(node):
        known = {
            "run": {"dir": str(directory)},
            "mode": node.get("mode") or "RUN",
            "overrides": {"task": overrides},
            "job": {"name": job, "override_dirname": ",".join(overrides)},
            "runtime": {
                "version": hydra_package.__version__,
                "cwd": os.getcwd(),
                "output_dir": str(directory.resolve()),
            },
        }
        node.merge_with(known)
    return node


def check_writable(directory: Path) -> None:
    """Create the run directory and prove it takes a file, or raise ConfigError naming it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or exc
        raise ConfigError(f"output_dir {directory} is not writable ({reason}); set output_dir=...") from exc


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None)))}


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Apply overrides to a saved config by Hydra's grammar (`finealign.overrides.apply`):
    `group=option` (e.g. aligner=hard, data=features) swaps in that group file; any other
    `a.b=value` sets one value (a saved config may predate a key, so a plain override may add it).
    `hydra.searchpath=[...]` (`--config-dir`) adds the user's folders to where group files are found."""
    overrides = list(overrides)
    extra = searchpath_roots(overrides)
    overrides = [o for o in overrides if o.lstrip("+").partition("=")[0] != SEARCHPATH_KEY]

    def group_node(key: str, value: str) -> DictConfig | None:
        if key not in GROUPS:
            return None
        path = group_options(key, extra).get(value)
        if path is None:
            return None
        node = cast(DictConfig, OmegaConf.load(path))  # a group file is a mapping
        node.pop("defaults", None)
        return node

    return apply_config_overrides(cfg, overrides, group_node)


def checkpoint_config(ckpt: str | Path, overrides: Iterable[str] = ()) -> tuple[dict, dict, DictConfig]:
    """(checkpoint state, its config snapshot, the saved config with `overrides` applied); a file
    that is not a finealign checkpoint is a ConfigError. model.pt keeps the snapshot at the top
    level (with data_meta), checkpoints/last.pt under "config"."""
    state = load_checkpoint(ckpt)
    if "config" not in state or "model" not in state:
        raise ConfigError(f"{ckpt} is not a finealign checkpoint (no config/model inside)")
    snapshot = state["config"] if "data_meta" not in state else state
    return state, snapshot, apply_overrides(OmegaConf.create(snapshot["config"]), overrides)


def _restore_model(
    ckpt: str | Path, overrides: list[str]
) -> tuple[RetrievalModel, ExperimentSpec, DictConfig, list[str]]:
    """(model, spec, config, aligner parameters the checkpoint lacks) of a saved model, built from
    its own config with `overrides` applied; a checkpoint that does not fit is a ConfigError."""
    state, snapshot, cfg = checkpoint_config(ckpt, overrides)
    spec = validate(cfg)
    seed_everything(spec.seed)
    model = build_model(spec, snapshot.get("data_meta", {})).to(resolve_device(spec.device))
    own = model.state_dict()
    for key, tensor in state["model"].items():
        if key in own and own[key].shape != tensor.shape:
            raise ConfigError(
                f"{ckpt} does not fit this model: {key} is {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(own[key].shape)} here (an override such as encoder.embed_dim changed the architecture)"
            )
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected or [k for k in missing if not k.startswith("aligner.")]:
        raise ConfigError(
            f"{ckpt} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]} "
            "(changed the encoder or embed_dim?)"
        )
    return model, spec, cfg, list(missing)


def load_trained_model(ckpt: str | Path, overrides: Iterable[str] = ()) -> tuple[RetrievalModel, ExperimentSpec]:
    """The model a checkpoint holds, built from its own config (with `overrides` applied)."""
    model, spec, _, _ = _restore_model(ckpt, list(overrides))
    return model, spec


def evaluate_untrained(cfg: DictConfig, *, overrides: Iterable[str] | None = None) -> dict:
    """Zero-shot: evaluate the composed model as built — pretrained towers, any aligner, no training
    (e.g. `finealign eval encoder=openclip_vit_b32 aligner=tokenflow data=flickr30k`). Results go
    to a fresh run directory like a training run's and carry `trained: false`."""
    spec, out_dir, device, dataset = _begin_run(cfg)
    split = dataset.split(spec.eval.split)
    check_splits({spec.eval.split: split}, allow_shared_images=spec.allow_shared_images)
    meta = dataset.split("train").meta if getattr(dataset, "has_split", lambda n: True)("train") else split.meta
    model = build_model(spec, meta).to(device)
    metrics: dict[str, Any] = _test_metrics(model, spec, split, device, out_dir)
    metrics.update(memory_metrics(device))
    config = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))  # a DictConfig gives a dict
    write_hydra_record(out_dir, cfg, overrides)
    save_results(
        out_dir,
        metrics,
        labels={**labels(spec), "trained": False},
        config=config,
        extra={"trained": False, "output_dir": str(out_dir), "provenance": provenance(device, overrides)},
    )
    metrics["output_dir"] = str(out_dir)
    return metrics


def evaluate_checkpoint(
    ckpt: str | Path, overrides: Iterable[str] = (), *, output_dir: str | Path | None = None
) -> dict:
    """Evaluate a saved model (model.pt or checkpoints/last.pt) on its config's eval split.

    The checkpoint's own config is used, with `overrides` applied on top (e.g. eval.split=val,
    data.root=/other/cache, or aligner=hard to score the same features with another aligner).
    Results go to a new directory, <output_dir> or else <checkpoint's folder>/eval/<timestamp>
    (never over an earlier evaluation's results); its path is returned as metrics["output_dir"].
    """
    overrides = list(overrides)
    model, spec, cfg, missing = _restore_model(ckpt, overrides)
    device = resolve_device(spec.device)
    dname, doptions = spec.data
    split = create_dataset(dname, **doptions).split(spec.eval.split)
    check_splits({spec.eval.split: split}, allow_shared_images=spec.allow_shared_images)
    run_dir = Path(ckpt).resolve().parent
    run_dir = run_dir.parent if run_dir.name == "checkpoints" else run_dir
    target = Path(output_dir) if output_dir is not None else run_dir / "eval" / _timestamp()
    target = claim_output_dir(OmegaConf.create({"output_dir": str(target)}))
    write_hydra_record(target, cfg, [f"ckpt={ckpt}", *overrides])
    metrics: dict[str, Any] = _test_metrics(model, spec, split, device, target)
    metrics.update(memory_metrics(device))
    save_results(
        target,
        metrics,
        labels=labels(spec),
        config=cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True)),
        extra={
            "checkpoint": str(ckpt),
            "new_aligner_params": missing,
            "output_dir": str(target),
            "provenance": provenance(device, overrides),
        },
    )
    metrics["output_dir"] = str(target)
    return metrics


def _timestamp() -> str:
    import datetime as _dt

    return _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
