"""The training loop: AdamW, warm-up + schedule, AMP, gradient accumulation and clipping,
validation with a report hook, and checkpoint/resume that continues a run exactly."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finealign.config import EvalConfig, TrainConfig
from finealign.data.base import RetrievalSplit
from finealign.encoders.batches import autocast_context
from finealign.engine.batching import check_batch_fits, epoch_loader, epoch_pairs, to_device
from finealign.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from finealign.engine.curves import CURVE_KEYS, EpochCurves, batch_curves
from finealign.engine.distributed import (
    SINGLE,
    GlobalBatchObjective,
    World,
    broadcast_object,
    check_global_batch,
    wrap_ddp,
)
from finealign.engine.evaluate import evaluate
from finealign.engine.metrics import HEADLINE
from finealign.engine.model import RetrievalModel, loss_extras
from finealign.engine.optim import apply_backbone_schedule, build_optimizer, enable_grad_checkpointing
from finealign.engine.schedule import LRSchedule
from finealign.engine.tracking import FinalTargets, ScalarSinks, flatten, open_sinks
from finealign.errors import ConfigError, DivergenceError
from finealign.kept import keep
from finealign.progress import bar as progress_bar

# Settings a resumed run may change: they do not alter what is trained or how (where results go,
# what is printed, how the test split is scored afterwards).
RESUME_FREE = ("train.resume", "train.progress", "train.log_every", "train.num_workers", "train.checkpoint",
               "train.save_model", "train.tensorboard", "train.mlflow", "train.mlflow_tracking_uri",
               "train.mlflow_experiment", "train.distributed", "train.dist_timeout_s", "eval", "output_dir", "device",
               "ckpt", "allow_shared_images")  # fmt: skip
log = logging.getLogger(__name__)
# Runaway, not just non-finite: a temperature this many times its value at the start of training
# (the logits are then ~0: the loss is flat, every gradient ~0, and training silently stops — what
# train.lr=1e3 does to InfoNCE's learnable scale), or a loss this many times its first value.
RUNAWAY_TEMPERATURE = 1e4
RUNAWAY_LOSS = 1e6
# the keys a training checkpoint (checkpoints/last.pt) holds and a saved model (model.pt) lacks
CHECKPOINT_KEYS = ("model", "loss", "optimizer", "scheduler", "scaler", "epoch", "result", "rng")


def check_same_run(saved: dict | None, current: dict | None, path: Path) -> None:
    """A resumed run must be the run that wrote the checkpoint: a changed schedule, model, loss,
    data or seed would silently continue the old one (the saved LR schedule is restored) while
    results.json records the new settings. Refuse, listing every difference."""
    if not saved or not current:
        return  # a checkpoint from outside the engine: nothing to compare
    old, new = flatten(saved), flatten(current)
    free = lambda key: any(key == f or key.startswith(f + ".") for f in RESUME_FREE)  # noqa: E731
    changed = sorted(k for k in set(old) | set(new) if not free(k) and old.get(k, "<unset>") != new.get(k, "<unset>"))
    if changed:
        lines = "; ".join(f"{k}: {old.get(k, '<unset>')!r} → {new.get(k, '<unset>')!r}" for k in changed[:12])
        more = f" (+{len(changed) - 12} more)" if len(changed) > 12 else ""
        raise ConfigError(
            f"cannot resume from {path}: the settings differ from the run that wrote it — {lines}{more}. "
            "Resume with the same settings, or start a new run (train.resume=null, a new output_dir)"
        )


@dataclass
class TrainResult:
    epochs_run: int = 0  # epochs completed (including any before a resume)
    steps: int = 0  # optimiser steps
    final_loss: float = float("nan")  # mean loss of the last epoch
    epoch_losses: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)  # validation metrics per epoch
    # per epoch: positive vs hardest-negative score and embedding spread (engine/curves.py)
    curves: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None  # best validation metrics (by rsum)
    train_time_s: float = 0.0  # wall time of this process's training (resumed runs: this part only)


class Trainer:
    """Trains a RetrievalModel with a loss on one split; see `fit`."""

    def __init__(
        self,
        model: RetrievalModel,
        loss: nn.Module,
        cfg: TrainConfig,
        *,
        device: torch.device,
        seed: int = 0,
        output_dir: str | Path | None = None,
        eval_cfg: EvalConfig | None = None,
        config_snapshot: dict[str, Any] | None = None,
        progress: bool = True,
        world: World = SINGLE,
        run_labels: dict[str, Any] | None = None,
    ):
        if cfg.amp == "fp16" and device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs a CUDA device; use bf16 (or none) on the CPU")
        self.model, self.loss, self.cfg, self.device, self.seed = model, loss, cfg, device, seed
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.eval_cfg = eval_cfg or EvalConfig()
        # validation scores like the test, on a gallery capped by train.val_max_items, without
        # progress bars, folds, cost timing or pinned threads
        self.validation_options = replace(
            self.eval_cfg, max_items=cfg.val_max_items, progress=False, coco_folds=0, cost_repeats=0, threads=0
        )
        self.config_snapshot = config_snapshot or {}
        self.run_labels = run_labels or {}  # what names and tags the run in TensorBoard / MLflow
        self.world = world  # several processes: rank 0 alone logs and writes checkpoints
        self.progress = progress and world.is_main
        check_global_batch(cfg.batch_size, world.size)
        self._ddp: Any = None  # the DDP-wrapped GlobalBatchObjective, when world.distributed
        self._ddp_params: tuple[int, ...] = ()  # the trainable parameters it was built over
        self.optimizer = build_optimizer(model, loss, cfg)
        if cfg.grad_checkpointing:
            enable_grad_checkpointing(model)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.best_state: dict[str, Any] | None = None
        self.tracking: FinalTargets | None = None  # where the test metrics go, once fit opened the sinks
        self.tracking_failures: list[str] = []  # sinks that failed and were dropped (results.json records them)
        self._start_temperature: float | None = None  # the loss's temperature when this fit started
        self._first_loss: float | None = None

    # -- checkpoints --------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.output_dir is None else self.output_dir / "checkpoints" / "last.pt"

    def _state(self, epoch: int, result: TrainResult) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,  # the last completed epoch
            "result": dataclasses.asdict(result),
            "best_state": self.best_state,
            "rng": rng_state(),
            "config": self.config_snapshot,
        }

    def _resume_path(self) -> Path | None:
        resume = self.cfg.resume
        if resume is None:
            return None
        if resume == "auto":
            path = self.checkpoint_path
            return path if path is not None and path.is_file() else None
        return Path(resume)

    def _restore(self, path: Path) -> tuple[int, TrainResult]:
        state = load_checkpoint(path)
        missing = [k for k in CHECKPOINT_KEYS if k not in state]
        if missing:
            what = "a saved model (weights and config only)" if "model" in state else "not a training checkpoint"
            raise ConfigError(
                f"train.resume={path} is {what}: it lacks {', '.join(missing)}. Resume from a run's "
                "checkpoints/last.pt (written with train.checkpoint=true); to test a model.pt use `finealign eval ckpt=...`"
            )
        check_same_run(state.get("config", {}).get("config"), self.config_snapshot.get("config"), path)
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.best_state = state["best_state"]
        set_rng_state(state["rng"])
        result = TrainResult(**state["result"])
        result.train_time_s = 0.0
        return state["epoch"] + 1, result

    # -- the loop -----------------------------------------------------------------------------
    def fit(
        self,
        train_split: RetrievalSplit,
        val_split: RetrievalSplit | None = None,
        on_validation: Callable[[int, dict], None] | None = None,
    ) -> TrainResult:
        """Train for cfg.epochs; validate every cfg.eval_every epochs and call on_validation(epoch, metrics)
        after each validation (after the checkpoint is written, so a run stopped by `report` can
        still be resumed). Leaves the model with the selected (best or last) weights."""
        cfg = self.cfg
        pairs = len(epoch_pairs(train_split, cfg.pairs, self.seed, 0))
        batches = pairs // cfg.batch_size or 1
        steps_per_epoch = math.ceil(batches / cfg.accumulate)
        total = cfg.epochs * steps_per_epoch if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
        schedule = LRSchedule(
            total_steps=total,
            warmup_steps=cfg.warmup_for(total),
            kind=cfg.schedule,
            steps_per_epoch=steps_per_epoch,
            step_epochs=cfg.step_epochs,
            gamma=cfg.step_gamma,
            min_ratio=cfg.min_lr_ratio,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        result, start_epoch = TrainResult(), 0
        # rank 0 decides, so every rank resumes from the same file (output_dir: a filesystem all nodes share)
        resume = broadcast_object(self._resume_path(), self.world)
        if resume is not None:
            start_epoch, result = self._restore(resume)
        batch = min(cfg.batch_size, pairs)
        check_batch_fits(min(batch, train_split.num_items), batch, self.device, cfg.amp)
        started = time.perf_counter()
        # rank 0 alone writes scalars (TensorBoard, MLflow)
        sinks = open_sinks(cfg, self.output_dir if self.world.is_main else None, self.config_snapshot.get("config", {}),
                           self.run_labels)  # fmt: skip
        temperature = getattr(self.loss, "temperature", None)
        self._start_temperature = float(temperature) if isinstance(temperature, (int, float)) else None
        try:
            self._epochs(train_split, val_split, on_validation, start_epoch, result, sinks, started)
        finally:
            sinks.close()  # also when training stops with an error: an MLflow run is ended, not left running
            self.tracking = sinks.finals  # without the sinks that failed and were dropped
            self.tracking_failures = sinks.failures
        if cfg.select == "best" and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return result

    def _epochs(self, train_split: RetrievalSplit, val_split: RetrievalSplit | None,
                on_validation: Callable[[int, dict], None] | None, start_epoch: int, result: TrainResult,
                sinks: ScalarSinks, started: float) -> None:  # fmt: skip
        cfg = self.cfg
        for epoch in range(start_epoch, cfg.epochs):
            if cfg.max_steps and result.steps >= cfg.max_steps:
                break
            epoch_loss, curves = self._train_epoch(train_split, epoch, result)
            self._check_parameters(epoch, result.steps)
            result.epoch_losses.append(epoch_loss)
            result.curves.append({"epoch": float(epoch), "loss": epoch_loss, **curves.means()})
            result.final_loss = epoch_loss
            result.epochs_run = epoch + 1
            metrics = None
            if val_split is not None and cfg.eval_every and (epoch + 1) % cfg.eval_every == 0:
                metrics = self._validate(val_split)
                metrics["epoch"] = float(epoch)
                metrics["train_loss"] = epoch_loss
                result.history.append(metrics)
                if result.best is None or metrics["rsum"] > result.best["rsum"]:
                    result.best = metrics
                    if cfg.select == "best":
                        self.best_state = {
                            k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
                        }
            result.train_time_s += time.perf_counter() - started
            started = time.perf_counter()
            if cfg.checkpoint and self.checkpoint_path is not None and self.world.is_main:
                save_checkpoint(self.checkpoint_path, self._state(epoch, result))
                keep("checkpoint", f"checkpoint {self.checkpoint_path} after epoch {epoch + 1} "
                     f"(go on with train.resume={self.checkpoint_path})")  # fmt: skip
            self._log_epoch(epoch, epoch_loss, metrics, sinks, result.curves[-1])
            if metrics is not None and on_validation is not None:
                on_validation(epoch, metrics)
        result.train_time_s += time.perf_counter() - started

    def _train_epoch(self, split: RetrievalSplit, epoch: int, result: TrainResult) -> tuple[float, EpochCurves]:
        cfg = self.cfg
        self.model.train()
        unfrozen = apply_backbone_schedule(self.model, cfg, epoch)
        if unfrozen and epoch == cfg.unfreeze_backbone_epoch and self.world.is_main:
            log.info(
                "epoch %d: backbones unfrozen (train.unfreeze_backbone_epoch), lr %.3g", epoch + 1, cfg.backbone_lr
            )
        self.loss.train()
        if hasattr(self.loss, "set_epoch"):
            self.loss.set_epoch(epoch)  # type: ignore[operator]  # duck-typed: a plugin loss need not derive from Loss
        loader = epoch_loader(
            split,
            self.model,
            mode=cfg.pairs,
            batch_size=cfg.batch_size,
            seed=self.seed,
            epoch=epoch,
            num_workers=cfg.num_workers,
            rank=self.world.rank,
            world_size=self.world.size,
        )
        total, count, curves = 0.0, 0, EpochCurves()
        self.optimizer.zero_grad(set_to_none=True)
        bar = progress_bar(loader, progress=self.progress, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for i, batch in enumerate(bar):
            last_of_step = (i + 1) % cfg.accumulate == 0 or i + 1 == len(loader)
            if self.world.distributed:
                loss = self._global_batch_loss(batch, epoch, i, result.steps)
            else:
                with autocast_context(self.device, cfg.amp):
                    visual = self.model.encode_images(to_device(batch.images, self.device))
                    text = self.model.encode_texts(to_device(batch.texts, self.device))
                    extras = loss_extras(visual, text)  # once: the divergence check and the loss read it
                    self._check_embeddings(visual, text, extras, epoch, i, result.steps)
                    sim = self.model.aligner(visual, text)
                    self._check_scores(sim, epoch, i, result.steps)
                    positives = batch.positives.to(self.device)
                    loss = self.loss(sim, positives, extras)
                    curves.add(batch_curves(sim, positives, extras["image_global"], extras["text_global"]))
            self._check_loss(loss, epoch, i, result.steps)
            with self._ddp.no_sync() if self.world.distributed and not last_of_step else contextlib.nullcontext():
                self.scaler.scale(loss / cfg.accumulate).backward()
            total, count = total + float(loss.detach()), count + 1
            if last_of_step:
                self._step()
                result.steps += 1
                if cfg.max_steps and result.steps >= cfg.max_steps:
                    break
            if (i + 1) % cfg.log_every == 0:
                bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        return total / max(count, 1), curves

    def _global_batch_loss(self, batch: Any, epoch: int, i: int, steps: int) -> torch.Tensor:
        """The loss of the global batch, computed on this rank from every rank's gathered tokens,
        through DistributedDataParallel (which averages the gradients in backward)."""
        trainable = tuple(id(p) for p in [*self.model.parameters(), *self.loss.parameters()] if p.requires_grad)
        if self._ddp is None or trainable != self._ddp_params:
            # DDP fixes its parameter set when built: rebuild it when backbones are (un)frozen.
            self._ddp = wrap_ddp(GlobalBatchObjective(self.model, self.loss, self.world), self.device)
            self._ddp_params = trainable

        def check(visual: Any, text: Any, extras: dict[str, Any]) -> None:
            self._check_embeddings(visual, text, extras, epoch, i, steps)

        with autocast_context(self.device, self.cfg.amp):
            return self._ddp(
                to_device(batch.images, self.device), to_device(batch.texts, self.device),
                batch.item_ids.to(self.device), batch.caption_items().to(self.device), check=check,
            )  # fmt: skip

    # -- logs ---------------------------------------------------------------------------------
    def _log_epoch(
        self, epoch: int, loss: float, val: dict[str, float] | None, sinks: ScalarSinks, curves: dict[str, float]
    ) -> None:
        """One console line per epoch (loss, lr, temperature, validation recall) and the same as scalars
        (with the training curves: positive vs hardest-negative score, embedding spread)."""
        scalars = {"train/loss": loss, "train/lr": self._lr()}
        scalars.update({f"train/{k}": v for k, v in curves.items() if k in CURVE_KEYS and math.isfinite(v)})
        temperature = getattr(self.loss, "temperature", None)
        if isinstance(temperature, (int, float)):
            scalars["train/temperature"] = float(temperature)
        line = f"epoch {epoch + 1}/{self.cfg.epochs}: loss {loss:.4f}, lr {self._lr():.3g}"
        if "train/temperature" in scalars:
            line += f", temperature {scalars['train/temperature']:.4g}"
        if val is not None:
            scalars.update({f"val/{k}": float(v) for k, v in val.items() if k in HEADLINE})
            line += f"; val rsum {val['rsum']:.1f} (i2t R@1 {val['i2t_r1']:.1f}, t2i R@1 {val['t2i_r1']:.1f})"
        if self.world.is_main:
            log.info(line)
        sinks.log(scalars, epoch + 1)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _where(self, epoch: int, batch: int, steps: int) -> str:
        return f"at epoch {epoch}, batch {batch} (after {steps} optimiser steps, lr {self._lr():.3g})"

    def _check_scores(self, sim: torch.Tensor, epoch: int, batch: int, steps: int) -> None:
        with torch.no_grad():
            if not bool(torch.isfinite(sim).all()):
                raise DivergenceError(
                    f"the aligner's scores became NaN/inf {self._where(epoch, batch, steps)}: training diverged; "
                    "lower train.lr"
                )

    def _check_loss(self, loss: torch.Tensor, epoch: int, batch: int, steps: int) -> None:
        """Stop when the loss is non-finite or ran away, or the loss's temperature did: a learnable
        temperature driven to inf (or 1e4× its start) flattens every logit, the loss stops
        changing and training would end at chance recall with exit 0."""
        where = self._where(epoch, batch, steps)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DivergenceError(f"loss became {value} {where}: training diverged; lower train.lr")
        if self._first_loss is None:
            self._first_loss = abs(value)
        elif abs(value) > RUNAWAY_LOSS * max(self._first_loss, 1.0):
            raise DivergenceError(
                f"loss ran away to {value:.3g} {where} (it started at {self._first_loss:.3g}): training diverged; "
                "lower train.lr"
            )
        temperature = getattr(self.loss, "temperature", None)
        if not isinstance(temperature, (int, float)):
            return
        start = self._start_temperature
        if not math.isfinite(temperature) or temperature <= 0:
            raise DivergenceError(
                f"the loss's temperature became {temperature} {where}: its learnable scale diverged and every "
                "logit is flat; lower train.lr (or train.temperature_lr)"
            )
        if start is not None and start > 0 and temperature > RUNAWAY_TEMPERATURE * start:
            raise DivergenceError(
                f"the loss's temperature ran away to {temperature:.3g} {where} (it started at {start:.3g}): every "
                "logit is flat and training has stopped learning; lower train.lr (or train.temperature_lr)"
            )

    def _check_parameters(self, epoch: int, steps: int) -> None:
        """After each epoch: every trained weight is finite (a step may have broken them after the
        last batch was checked)."""
        with torch.no_grad():
            named = [*self.model.named_parameters(), *(("loss." + k, p) for k, p in self.loss.named_parameters())]
            for name, param in named:
                if param.requires_grad and not bool(torch.isfinite(param).all()):
                    raise DivergenceError(
                        f"parameter {name} became NaN/inf in epoch {epoch} (after {steps} optimiser steps, "
                        f"lr {self._lr():.3g}): training diverged; lower train.lr"
                    )

    def _check_embeddings(
        self, visual: Any, text: Any, extras: dict[str, Any], epoch: int, batch: int, steps: int
    ) -> None:
        """Stop at the step where training breaks, naming the cause: non-finite embeddings (the
        weights diverged), or every item of the batch mapped to one point (collapse)."""
        where = self._where(epoch, batch, steps)
        with torch.no_grad():
            for name, tokens, key in (("image", visual, "image_global"), ("caption", text, "text_global")):
                # a NaN/inf anywhere in a token makes its fp32 sum non-finite: (N, L) work, not (N, L, d)
                real_sums = tokens.tokens.sum(-1, dtype=torch.float32)[tokens.mask]
                if not bool(torch.isfinite(real_sums).all()):
                    raise DivergenceError(
                        f"{name} embeddings became NaN/inf {where}: training diverged; lower train.lr"
                    )
                pooled = extras[key].float()
                if len(pooled) > 1 and steps > 0:
                    spread = float((pooled - pooled.mean(0)).abs().max())
                    if spread <= 1e-6 * float(pooled.abs().max()) + 1e-30:
                        raise DivergenceError(
                            f"{name} embeddings collapsed to one point {where}: every item looks the same; "
                            "lower train.lr"
                        )

    def _step(self) -> None:
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        assert self.scheduler is not None
        self.scheduler.step()

    def _validate(self, split: RetrievalSplit) -> dict[str, float]:
        return evaluate(
            self.model, split, self.validation_options, device=self.device, amp=self.cfg.amp,
            measure_memory=False, world=self.world,
        )  # fmt: skip
