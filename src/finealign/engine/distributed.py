"""Multi-process (DDP) plumbing: the process group from torchrun's environment, gathers that keep
the local shard's gradient, and the rules of a global batch.

`torchrun --nproc_per_node N -m finealign train ...` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. Each rank encodes 1/N of the global batch and gathers
every rank's tokens (contrastive losses need every negative); DistributedDataParallel averages the
gradients. The loss is the global batch's either way, with the gradients of one process on the
whole batch; who scores what (GlobalBatchObjective):

- local loss (the default): each rank scores its own images against every caption and every image
  against its own captions — B_local × B_global per direction, as open_clip's `local_loss=True,
  gather_with_grad=True` — and computes its share of the loss (`Loss.share_loss`); the gathers'
  backward sums every rank's gradient of a rank's tokens;
- the whole matrix (B_global × B_global on every rank, the same loss on each) when the loss has no
  `share_loss` (a plugin loss) or the aligner is `gallery_dependent` (two_stage: its scores of a
  pair may depend on the rest of the batch, so a block is not a slice of the whole matrix), and
  for a step in which some rank holds none of the global batch's distinct images.

Without WORLD_SIZE (or with WORLD_SIZE=1) nothing here is used and training is the single-process
loop.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from finealign.errors import ConfigError, FinealignError, ShapeError
from finealign.tokens import TokenBatch

if TYPE_CHECKING:
    from finealign.engine.model import RetrievalModel

log = logging.getLogger(__name__)


class RankFailure(FinealignError, RuntimeError):
    """A collective failed: another rank died, or did not answer within train.dist_timeout_s."""


@dataclass(frozen=True)
class World:
    """This process's place in the job; the default is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout_s: float = 1800.0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def check_global_batch(batch_size: int, world_size: int) -> None:
    """train.batch_size is the global batch: every rank takes an equal share of it."""
    if world_size > 1 and batch_size % world_size:
        raise ConfigError(
            f"train.batch_size={batch_size} (the global batch) is not divisible by the world size {world_size} "
            f"(WORLD_SIZE): every rank needs an equal share; use a multiple of {world_size}"
        )


def rank_device(device: torch.device) -> torch.device:
    """One GPU per process: torchrun's LOCAL_RANK picks it (a device=cuda:N setting is overridden)."""
    if device.type != "cuda":
        return device
    index = int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK={index} but this node has {torch.cuda.device_count()} GPU(s): "
                          "start at most one process per GPU (torchrun --nproc_per_node)")  # fmt: skip
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_world(mode: str, timeout_s: float, device: torch.device) -> World:
    """The World of this process: SINGLE unless launched with WORLD_SIZE > 1 and mode "auto".

    Backend: nccl on CUDA, gloo on the CPU. The timeout bounds every collective, so a rank whose
    peer died or hangs stops with RankFailure instead of waiting forever. The process group is
    made once per process and serves every later run in it (a multirun): destroying and remaking
    it on the same rendezvous port can deadlock, so it is destroyed only at exit."""
    size = env_world_size()
    if size <= 1:
        return SINGLE
    if mode == "off":
        log.warning("WORLD_SIZE=%d but train.distributed=off: this process trains alone", size)
        return SINGLE
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing and not dist.is_initialized():
        raise ConfigError(f"WORLD_SIZE={size} is set but {', '.join(missing)} is not: launch with torchrun "
                          "(torchrun --nproc_per_node N -m finealign train ...)")  # fmt: skip
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, timeout=datetime.timedelta(seconds=timeout_s), device_id=device if device.type == "cuda" else None
        )
        atexit.register(_destroy)
        _GROUP_TIMEOUT_S[0] = timeout_s
        if dist.get_rank() == 0:
            log.info("distributed training: %d processes (%s backend)", dist.get_world_size(), dist.get_backend())
    elif _GROUP_TIMEOUT_S[0] not in (None, timeout_s):
        log.warning("the process group exists with a %g s timeout; train.dist_timeout_s=%g applies to a new process",
                    _GROUP_TIMEOUT_S[0], timeout_s)  # fmt: skip
    timeout_s = _GROUP_TIMEOUT_S[0] or timeout_s
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), timeout_s)


_GROUP_TIMEOUT_S: list[float | None] = [None]  # the timeout the process group was made with


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def failures_named(world: World) -> Iterator[None]:
    """Turn a failed collective into RankFailure naming this rank, the world and the timeout."""
    try:
        yield
    except RankFailure:
        raise
    except (dist.DistError, RuntimeError) as exc:
        if not world.distributed or not _is_collective_error(exc):
            raise
        raise RankFailure(
            f"rank {world.rank} of {world.size}: a collective operation failed, so another rank died or did not "
            f"answer within train.dist_timeout_s={world.timeout_s:g} s; stopping this rank too "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc


def _is_collective_error(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "timed out",
                                         "timeout", "broken pipe", "peer"))  # fmt: skip


# -- gathers ---------------------------------------------------------------------------------


class _GatherKeepLocalGrad(torch.autograd.Function):
    """all_gather of equal-shape tensors; the backward returns world_size × the gradient of this
    rank's own chunk.

    Why the factor: every rank computes the same global loss L from the same gathered tensors, so
    each rank's gradient for chunk r is the same ∂L/∂x_r, and the sum over ranks that a
    reduce-scatter would compute is world_size × ∂L/∂x_r — obtained here without communication.
    DistributedDataParallel then averages parameter gradients over ranks: an encoder parameter
    receives (1/W) Σ_r W·∂L/∂x_r·∂x_r/∂θ = ∂L/∂θ, the single-process gradient of the whole batch,
    and the aligner's and the loss's parameters, whose gradient is already the full ∂L/∂θ on every
    rank, are averaged to itself. So the loss itself is not rescaled."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.rank, ctx.size = dist.get_rank(), dist.get_world_size()
        chunks = [torch.empty_like(x) for _ in range(ctx.size)]
        dist.all_gather(chunks, x.contiguous())
        return torch.stack(chunks)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad[ctx.rank] * ctx.size


class _GatherSumGrad(torch.autograd.Function):
    """all_gather of equal-shape tensors; the backward sums every rank's gradient of this rank's
    chunk (a reduce-scatter). For the local loss: rank r computes only its share L_r of the global
    loss L = Σ_r L_r, so the gradient of chunk s is Σ_r ∂L_r/∂x_s, which lives on every rank."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.rank, ctx.size = dist.get_rank(), dist.get_world_size()
        chunks = [torch.empty_like(x) for _ in range(ctx.size)]
        dist.all_gather(chunks, x.contiguous())
        return torch.stack(chunks)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()  # the collective writes in place; autograd's buffer stays as it is
        if dist.get_backend() == "nccl":  # one chunk per rank on the wire, not the whole stack
            out = torch.empty_like(grad[ctx.rank])
            dist.reduce_scatter_tensor(out, grad)
            return out
        dist.all_reduce(grad)  # gloo has no reduce-scatter
        return grad[ctx.rank]


def _all_sizes(values: Sequence[int], device: torch.device) -> list[list[int]]:
    """Every rank's `values` (the same count on each rank)."""
    mine = torch.tensor(list(values), dtype=torch.long, device=device)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [t.tolist() for t in out]


def _pad_to(x: Tensor, shape: Sequence[int], value: Any = 0) -> Tensor:
    pads: list[int] = []
    for have, want in zip(reversed(x.shape), reversed(list(shape))):
        pads += [0, want - have]
    return torch.nn.functional.pad(x, pads, value=value) if any(pads) else x


def gather_rows(x: Tensor, world: World, *, sum_grads: bool = False) -> Tensor:
    """Concatenate every rank's `x` along dim 0 in rank order; ranks may hold different row counts,
    the other dims must agree. Gradients flow back to this rank's rows: world_size × this rank's
    own (every rank computes the same loss, _GatherKeepLocalGrad), or with `sum_grads` the sum of
    every rank's (each computes its share, _GatherSumGrad)."""
    if not world.distributed:
        return x
    sizes = _all_sizes(list(x.shape), x.device)
    if any(s[1:] != sizes[0][1:] for s in sizes):
        raise ShapeError(f"cannot gather rows of shapes {sizes} across ranks: only the first dim may differ")
    return _gather_counted(x, [s[0] for s in sizes], world, sum_grads)


def _gather_counted(x: Tensor, counts: list[int], world: World, sum_grads: bool = False) -> Tensor:
    """gather_rows when every rank's row count is known (one collective, not two)."""
    gather = _GatherSumGrad if sum_grads and x.requires_grad else _GatherKeepLocalGrad
    stacked = gather.apply(_pad_to(x, (max(counts), *x.shape[1:])))
    return torch.cat([stacked[r][: counts[r]] for r in range(world.size)])


def gather_token_batch(batch: TokenBatch, world: World, *, sum_grads: bool = False) -> TokenBatch:
    """Every rank's TokenBatch as one, in rank order; token lengths differ per rank, so each is
    padded to the longest (padding is masked out, as within one batch). `sum_grads`: as gather_rows."""
    if not world.distributed:
        return batch
    n, length, dim = batch.tokens.shape
    sizes = _all_sizes([n, length, dim, int(batch.pooled is not None)], batch.tokens.device)
    if len({tuple(s[2:]) for s in sizes}) > 1:
        raise ShapeError(f"ranks' token batches disagree on the feature width or on having pooled vectors: {sizes}")
    counts, longest = [s[0] for s in sizes], max(s[1] for s in sizes)
    tokens = _gather_counted(_pad_to(batch.tokens, (n, longest, dim)), counts, world, sum_grads)
    mask = _gather_counted(_pad_to(batch.mask.to(torch.uint8), (n, longest)), counts, world).bool()
    pooled = _gather_counted(batch.pooled, counts, world, sum_grads) if batch.pooled is not None else None
    return TokenBatch(tokens, mask, pooled)


def first_occurrences(ids: Tensor) -> Tensor:
    """Indices of the first occurrence of each distinct id, in order of appearance."""
    order = torch.arange(len(ids), device=ids.device)
    first = torch.full((int(ids.max()) + 1,), len(ids), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, ids, order, reduce="amin")
    seen = first[ids] == order
    return order[seen]


# Settings that may differ between ranks: rank 0 claims the run directory and tells the others (a
# `${now:...}` in it may resolve a second apart).
RANK_FREE = ("output_dir",)


def check_ranks_agree(config: Any, world: World) -> None:
    """Every rank was started with the same resolved config (seed included), or every rank raises
    the same ConfigError naming the keys that differ and each rank's value. Without this, a rank
    given another lr, aligner or seed trains its share differently and results.json records only
    rank 0's settings."""
    if not world.distributed:
        return
    from finealign.engine.tracking import flatten

    mine = {
        k: repr(v) for k, v in flatten(config).items() if not any(k == f or k.startswith(f + ".") for f in RANK_FREE)
    }
    everyone: list[Any] = [None] * world.size
    dist.all_gather_object(everyone, mine)
    keys = sorted({k for flat in everyone for k in flat})
    differ = [k for k in keys if len({flat.get(k, "<unset>") for flat in everyone}) > 1]
    if differ:
        values = lambda k: ", ".join(f"rank {r}: {flat.get(k, '<unset>')}" for r, flat in enumerate(everyone))  # noqa: E731
        listed = "; ".join(f"{k} ({values(k)})" for k in differ[:8])
        more = f" (+{len(differ) - 8} more)" if len(differ) > 8 else ""
        raise ConfigError(
            f"the {world.size} ranks were started with different settings — {listed}{more}. Every rank must run "
            "the same command with the same overrides (torchrun --nproc_per_node N -m finealign train ...)"
        )


def broadcast_object(obj: Any, world: World, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (a run directory, a metrics dict)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_range(count: int, world: World) -> tuple[int, int]:
    """This rank's contiguous share [lo, hi) of `count` items (the first ranks take one more)."""
    base, extra = divmod(count, world.size)
    lo = world.rank * base + min(world.rank, extra)
    return lo, lo + base + (world.rank < extra)


# -- the global batch --------------------------------------------------------------------------


class GlobalBatchObjective(nn.Module):
    """One rank's training forward: encode the local shard, gather every rank's tokens, and return
    the loss of the global batch — scored as a local loss (this rank's queries against the global
    batch) where the loss and the aligner allow it, else as the whole matrix (module docstring).

    Images that two ranks both drew (two of their captions fell into different shards) are kept
    once, at their first occurrence, as one process deduplicates a batch; an image belongs to the
    rank of that occurrence, a caption to the rank that drew it. Positives are rebuilt for the
    global batch from the dataset indices. Model and loss sit in one module so that DDP averages
    the gradients of both (the loss may own a learnable temperature).

    The returned value is the global loss on every rank either way. Its gradient on rank r is that
    of W·L_r under the local loss (L_r: rank r's share, Σ_r L_r = L): DDP's average over ranks of
    the parameters' gradients then gives ∂L/∂θ, as the whole matrix's path does."""

    def __init__(self, model: RetrievalModel, loss: nn.Module, world: World, *, local_loss: bool = True):
        super().__init__()
        self.model, self.loss, self.world = model, loss, world
        self.why_whole = self._why_whole(local_loss)  # None: the local loss
        self.last_path = ""  # "local" or "whole" for the last step (tests and logs)
        if world.is_main:
            log.info("distributed loss: %s", "each rank scores its own queries against the global batch "
                     "(local loss)" if self.why_whole is None else f"the whole matrix on every rank: {self.why_whole}")  # fmt: skip

    def _why_whole(self, local_loss: bool) -> str | None:
        if not local_loss:
            return "asked for"
        if not callable(getattr(self.loss, "share_loss", None)):
            return f"the loss {type(self.loss).__name__} has no share_loss (losses/base.py)"
        # the aligner's declared contract (aligners/base.py), read as engine/evaluate reads it
        if getattr(self.model.aligner, "gallery_dependent", False):
            return (f"the aligner {type(self.model.aligner).__name__} is gallery_dependent (a pair's score may "
                    "depend on the rest of the batch)")  # fmt: skip
        return None

    def forward(
        self, images: Any, texts: Any, item_ids: Tensor, caption_items: Tensor,
        check: Callable[[TokenBatch, TokenBatch, dict[str, Tensor]], None] | None = None,
    ) -> Tensor:  # fmt: skip
        from finealign.engine.model import loss_extras

        world = self.world
        with torch.no_grad():  # every rank's ids, with the rank that drew each
            images_of = gather_rows(torch.stack([item_ids, torch.full_like(item_ids, world.rank)], 1), world)
            captions_of = gather_rows(
                torch.stack([caption_items, torch.full_like(caption_items, world.rank)], 1), world
            )
        item_ids, caption_items, caption_rank = images_of[:, 0], captions_of[:, 0], captions_of[:, 1]
        keep = first_occurrences(item_ids)
        item_ids, image_rank = item_ids[keep], images_of[keep, 1]
        # the same decision on every rank (it sees every rank's ids): the gathers' backward must match
        owned = torch.bincount(image_rank, minlength=world.size)
        local = self.why_whole is None and bool((owned > 0).all())
        self.last_path = "local" if local else "whole"
        visual = gather_token_batch(self.model.encode_images(images), world, sum_grads=local)[keep]
        text = gather_token_batch(self.model.encode_texts(texts), world, sum_grads=local)
        positives = item_ids[:, None] == caption_items[None, :]
        extras = loss_extras(visual, text)
        if check is not None:
            check(visual, text, extras)
        if not local:
            return self.loss(self.model.aligner(visual, text), positives, extras)
        return self._local_loss(visual, text, positives, extras, image_rank == world.rank, caption_rank == world.rank)

    def _local_loss(self, visual: TokenBatch, text: TokenBatch, positives: Tensor, extras: dict[str, Tensor],
                    own_images: Tensor, own_captions: Tensor) -> Tensor:  # fmt: skip
        """This rank's share: its images against every caption, the other images against its
        captions (its own images' block is not scored twice), the whole-loss value on every rank."""
        from finealign.losses.base import BatchShare

        mine, others = own_images.nonzero().flatten(), (~own_images).nonzero().flatten()
        cols = own_captions.nonzero().flatten()
        i2t = self.model.aligner(visual[mine], text)  # (n_img, B_txt)
        rest = self.model.aligner(visual[others], text[cols])  # (B_img - n_img, n_txt)
        t2i = torch.cat([i2t[:, cols], rest])[torch.cat([mine, others]).argsort()]  # (B_img, n_txt)
        part = cast(Any, self.loss).share_loss(BatchShare(i2t, t2i, mine, cols, positives, extras))
        total = part.detach().clone()
        dist.all_reduce(total)  # Σ_r L_r = L: what every rank reports
        scaled = part * self.world.size
        return scaled + (total - scaled).detach()


def wrap_ddp(objective: GlobalBatchObjective, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the objective. find_unused_parameters: some aligners hold
    parameters a step may not reach (a branch switched off by its config); DDP would otherwise stop
    at the next step waiting for their gradients."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(objective, device_ids=ids, find_unused_parameters=True)
