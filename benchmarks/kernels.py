"""Benchmark the fused scoring kernels against torch and against fused peers, on one GPU.

    PYTHONPATH=src python benchmarks/kernels.py --sizes small,flickr30k --out runs/kernels

For each size (images × captions, Lv × Lt tokens, d, bf16 on CUDA) it times on the same inputs:

  floor          the bf16 matmul (Nv·Lv, d) × (d, Nt·Lt) with torch.matmul (cuBLAS), run in row
                 blocks into one reused output buffer of ≤ 4 GiB: the token-pair similarities every
                 method needs, with nothing else. FLOPs = 2·Nv·Lv·Nt·Lt·d for every method.
  naive torch    all (cv, Nt, Lv, Lt) similarities at once, cv as large as a 16 GiB budget allows.
  chunked torch  the aligners' torch paths (mean_max backend="torch", hard; 64 × 256 blocks).
  fused          finealign.kernels (Triton), raw and through the aligner (backend="triton").
  peers          late-interaction-kernels `maxsim` and flash-maxsim `flash_maxsim_batched`, when
                 importable (they return sums over words: divided by the word count here).
  hard / lse     CHAN-style hard alignment (τ·LSE pooling, τ = 0.1): fused vs chunked torch.
  shortlist      two_stage's re-ranking: the pair kernels (mean-max, Sinkhorn) on the union of
                 each image's and each caption's top-K captions/images by global similarity
                 (--top-k, 20), and the whole two_stage aligner; compared with the full matrix.
  fwd+bwd        a training step at batch scale: mean-max (fused vs torch autograd) and tokenflow
                 (fused forward + backward kernels vs the checkpointed torch solver).
  tokenflow      fused Sinkhorn (20 iterations, ε = 0.1), log and scaling domain, for the full matrix; the batched torch
                 solver and POT (ot.sinkhorn per pair, CPU) on a subset, EXTRAPOLATED linearly to
                 the full matrix (marked "extrap."); geomloss, when importable, timing only (a
                 different algorithm: ε-scaling, debiased).

Every method's scores on the first few images are compared with a float64 torch reference
(rel_err = ‖out − ref‖ / ‖ref‖). Peak extra memory is the CUDA allocator's peak above the inputs.
A size is skipped when its inputs do not fit. Prints a table (and writes CSV + Markdown to --out).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pandas as pd
import torch

from finealign.kernels import SinkhornOptions, Tiles, maxsim_scores, sinkhorn_flow_scores
from finealign.kernels.maxsim_torch import maxsim_torch
from finealign.registry import create_aligner
from finealign.tokens import TokenBatch

SIZES = {  # name: (Nv, Nt, Lv, Lt, d)
    "cpu-smoke": (3, 9, 20, 12, 64),  # small token counts: the Triton interpreter runs every lane in Python
    "tiny": (64, 320, 50, 32, 512),
    "small": (200, 1000, 50, 32, 512),
    "flickr30k": (1000, 5000, 50, 32, 512),
    "coco5k": (5000, 25000, 50, 32, 512),
}
REF_IMAGES = 8  # rows of the score matrix checked against the float64 reference
GiB = 1 << 30


DEVICE = "cuda"  # "cpu" only for a smoke test of this script under TRITON_INTERPRET=1


def make_inputs(nv, nt, lv, lt, d, seed=0):
    """Unit-norm bf16 tokens; text padded at the end to random lengths in [4, Lt], visual in [Lv/2, Lv]."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    v = torch.nn.functional.normalize(torch.randn(nv, lv, d, device=DEVICE, generator=g), dim=-1).bfloat16()
    t = torch.nn.functional.normalize(torch.randn(nt, lt, d, device=DEVICE, generator=g), dim=-1).bfloat16()
    vlen = torch.randint(lv // 2, lv + 1, (nv,), device=DEVICE, generator=g)
    tlen = torch.randint(4, lt + 1, (nt,), device=DEVICE, generator=g)
    vm = torch.arange(lv, device=DEVICE)[None] < vlen[:, None]
    tm = torch.arange(lt, device=DEVICE)[None] < tlen[:, None]
    return v * vm[..., None], vm, t * tm[..., None], tm, vlen, tlen


def pooled(x, mask):
    """Unit-norm masked token means: the global vectors of TokenFlow's importance marginals."""
    m = mask[..., None].to(torch.float32)
    return torch.nn.functional.normalize((x.float() * m).sum(1) / m.sum(1), dim=-1)


def timed(fn, repeats):
    """(median seconds, output, peak extra bytes) after one warm-up run (CUDA events on a GPU).
    repeats=0 runs once, untimed (NaN seconds): the CPU smoke check of the script itself."""
    out = fn()
    if repeats == 0:
        return float("nan"), out, 0
    if DEVICE != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2], out, 0
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    peak = torch.cuda.max_memory_allocated() - base
    return sorted(times)[len(times) // 2], out, peak


def matmul_floor(v, t, repeats):
    a, b = v.reshape(-1, v.shape[-1]), t.reshape(-1, t.shape[-1]).T
    rows = max(1, min(a.shape[0], (4 * GiB) // (2 * b.shape[1])))
    buf = torch.empty(rows, b.shape[1], dtype=v.dtype, device=v.device)

    def run():
        for i in range(0, a.shape[0], rows):
            blk = a[i : i + rows]
            torch.matmul(blk, b, out=buf[: blk.shape[0]])
        return None

    return timed(run, repeats)[0]


def rel_err(out, ref):
    if out is None or ref is None:
        return float("nan")
    out = out[: ref.shape[0]].double()
    return float((out - ref).norm() / ref.norm())


def peers(v, vm, t, tm, vlen, tlen):
    """{name: fn} for the fused MaxSim peers that import (scores as word means, (Nv, Nt))."""
    found = {}
    words = tlen.float()[None, :]
    try:
        import late_interaction_kernels as lik

        found["late-interaction-kernels"] = lambda: lik.maxsim(t, v, tm, vm).T.float() / words
    except Exception as exc:  # noqa: BLE001 - a peer that fails to import is reported and skipped
        print(f"[skip] late-interaction-kernels: {type(exc).__name__}: {exc}")
    try:
        import flash_maxsim

        found["flash-maxsim"] = lambda: (
            flash_maxsim.flash_maxsim_batched(t, v, doc_lengths=vlen.int(), query_lengths=tlen.int()).T.float() / words
        )
    except Exception as exc:  # noqa: BLE001
        print(f"[skip] flash-maxsim: {type(exc).__name__}: {exc}")
    return found


def bench_size(name, nv, nt, lv, lt, d, repeats, args):
    rows = []
    flops = 2.0 * nv * lv * nt * lt * d
    need = 2 * (nv * lv + nt * lt) * d * 1.5
    if DEVICE == "cuda" and need > torch.cuda.mem_get_info()[0]:
        print(f"[skip] {name}: inputs need {need / GiB:.1f} GiB")
        return rows
    v, vm, t, tm, vlen, tlen = make_inputs(nv, nt, lv, lt, d)
    floor = matmul_floor(v, t, repeats)
    print(
        f"== {name}: {nv} x {nt} items, {lv} x {lt} tokens, d={d}; floor {floor * 1e3:.2f} ms "
        f"({flops / floor / 1e12:.0f} TFLOP/s)"
    )
    ref_mean = maxsim_torch(
        v[:REF_IMAGES].double(),
        vm[:REF_IMAGES],
        t.double(),
        tm,
        "mean",
        "text",
        0.1,
        chunk_visual=REF_IMAGES,
        chunk_text=512,
    )
    ref_lse = maxsim_torch(
        v[:REF_IMAGES].double(),
        vm[:REF_IMAGES],
        t.double(),
        tm,
        "lse",
        "text",
        0.1,
        chunk_visual=REF_IMAGES,
        chunk_text=512,
    )

    def add(task, method, fn, ref, note="", reps=repeats):
        try:
            sec, out, peak = timed(fn, reps)
        except torch.cuda.OutOfMemoryError:
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
            print(f"[oom] {task} / {method}")
            rows.append(dict(size=name, task=task, method=method, ms=float("nan"), note="OOM"))
            return None
        except Exception as exc:  # noqa: BLE001 - a failing peer must not stop the benchmark
            print(f"[fail] {task} / {method}: {type(exc).__name__}: {exc}")
            rows.append(
                dict(size=name, task=task, method=method, ms=float("nan"), note=f"failed: {type(exc).__name__}")
            )
            return None
        rows.append(
            dict(
                size=name,
                task=task,
                method=method,
                ms=sec * 1e3,
                x_floor=sec / floor,
                rel_err=rel_err(out, ref),
                extra_MiB=peak / 2**20,
                note=note,
            )
        )
        print(
            f"  {task:9s} {method:28s} {sec * 1e3:10.2f} ms  {sec / floor:6.2f}x floor  "
            f"rel_err {rows[-1]['rel_err']:.1e}  extra {peak / 2**20:9.1f} MiB {note}"
        )
        return sec

    rows.append(
        dict(
            size=name,
            task="matmul",
            method="floor (cuBLAS bf16)",
            ms=floor * 1e3,
            x_floor=1.0,
            note=f"{flops / floor / 1e12:.0f} TFLOP/s",
        )
    )
    slow_reps = 1 if nv * nt > 2e6 else repeats
    # -- mean-max -------------------------------------------------------------------------------
    budget = 16 * GiB
    cv = max(1, min(nv, int(budget // (nt * lv * lt * 2 * 3))))
    add(
        "mean_max",
        f"naive torch (cv={cv})",
        lambda: maxsim_torch(v, vm, t, tm, "mean", "text", 0.1, chunk_visual=cv, chunk_text=nt),
        ref_mean,
        reps=slow_reps,
    )
    visual, text = TokenBatch(v, vm), TokenBatch(t, tm)
    torch_aligner = create_aligner("mean_max", backend="torch")
    add("mean_max", "chunked torch (aligner, 64x256)", lambda: torch_aligner(visual, text), ref_mean, reps=slow_reps)
    add("mean_max", "fused triton", lambda: maxsim_scores(v, vm, t, tm, "mean", "text", backend="triton"), ref_mean)
    fused_aligner = create_aligner("mean_max", backend="triton")
    add(
        "mean_max",
        "fused triton (aligner)",
        lambda: fused_aligner(visual, text),
        ref_mean,
        note="incl. input checks + normalise",
    )
    # Packed tiles: 5 images × 50 regions in 256 columns instead of 5 × 64 (see kernels/tiles.py).
    packed = [Tiles(max(1, 256 // lv), bt, 64, w, 3, packed=True) for bt, w in ((4, 8), (2, 8), (2, 4))]
    for tiles in packed + args.tiles:
        label = (
            f"fused tiles bv={tiles.items_visual} bt={tiles.items_text} bk={tiles.block_k} "
            f"w={tiles.num_warps} s={tiles.num_stages}" + (" packed" if tiles.packed else "")
        )
        add(
            "mean_max",
            label,
            lambda: maxsim_scores(v, vm, t, tm, "mean", "text", backend="triton", tiles=tiles),
            ref_mean,
        )
    # -- hard alignment (CHAN-style, τ·LSE) ---------------------------------------------------------
    hard = create_aligner("hard", pooling="lse", temperature=0.1, direction="text")
    add("hard_lse", "hard aligner (backend auto: fused on CUDA)", lambda: hard(visual, text), ref_lse, reps=slow_reps)
    add("hard_lse", "fused triton", lambda: maxsim_scores(v, vm, t, tm, "lse", "text", 0.1, backend="triton"), ref_lse)
    add(
        "hard_lse",
        "fused triton, packed 4 captions",
        lambda: maxsim_scores(v, vm, t, tm, "lse", "text", 0.1, backend="triton", tiles=packed[0]),
        ref_lse,
    )
    add(
        "both_dir",
        "fused triton (mean, both)",
        lambda: maxsim_scores(v, vm, t, tm, "mean", "both", backend="triton"),
        None,
    )
    # -- a training step (forward + backward) at batch scale ------------------------------------
    if nv * nt <= 1e6:
        for method, backend in (("torch autograd (64x256)", "torch"), ("fused triton fwd+bwd", "triton")):
            add(
                "fwd+bwd",
                method,
                lambda: train_step(v, vm, t, tm, backend),
                None,
                note="mean, both directions; grads of v and t",
            )
        if not args.no_sinkhorn:
            for method, backend in (
                ("tokenflow torch autograd (checkpointed)", "torch"),
                ("tokenflow fused fwd+bwd", "triton"),
            ):
                add(
                    "fwd+bwd",
                    method,
                    lambda: tokenflow_step(v, vm, t, tm, backend),
                    None,
                    note="20 it., importance marginals; grads of v, t and the pooled vectors",
                    reps=min(1, repeats),
                )
    # -- tokenflow (Sinkhorn) --------------------------------------------------------------------
    if not args.no_sinkhorn:
        bench_sinkhorn(name, rows, v, vm, t, tm, floor, repeats, args, add)
    bench_shortlist(rows, v, vm, t, tm, repeats, args, add)
    # Peers last: their first call autotunes, which can take a while.
    if not args.no_peers:
        for peer, fn in peers(v, vm, t, tm, vlen, tlen).items():
            add("mean_max", peer, fn, ref_mean)
    return rows


def bench_sinkhorn(name, rows, v, vm, t, tm, floor, repeats, args, add):
    nv, nt = v.shape[0], t.shape[0]
    sub_t = min(nt, 512)
    vp, tp = pooled(v, vm), pooled(t, tm)
    imp = dict(visual_pooled=vp, text_pooled=tp)  # TokenFlow's default "importance" marginals
    ref = sinkhorn_flow_scores(
        v[:4].double(),
        vm[:4],
        t[:sub_t].double(),
        tm[:sub_t],
        backend="torch",
        chunk_visual=4,
        chunk_text=128,
        visual_pooled=vp[:4].double(),
        text_pooled=tp[:sub_t].double(),
    )

    def check(out):  # error on the reference's corner of the matrix
        return out[:4, :sub_t] if out is not None else None

    def add_flow(method, fn, note="", reps=repeats):
        return add("tokenflow", method, lambda: check(fn()), ref, note, reps)

    mean_ms = next(
        (r["ms"] for r in rows if r["size"] == name and r["method"] == "fused triton" and r["task"] == "mean_max"),
        float("nan"),
    )
    sec = add_flow(
        "fused triton sinkhorn",
        lambda: sinkhorn_flow_scores(v, vm, t, tm, backend="triton", **imp),
        reps=1 if nv * nt > 2e7 else repeats,
    )
    if sec is not None:
        rows[-1]["note"] = f"{sec * 1e3 / mean_ms:.1f}x fused mean_max"
    sec = add_flow(
        "fused sinkhorn, scaling domain",
        lambda: sinkhorn_flow_scores(v, vm, t, tm, backend="triton", domain="scaling", **imp),
        reps=1 if nv * nt > 2e7 else repeats,
    )
    if sec is not None:
        rows[-1]["note"] = f"{sec * 1e3 / mean_ms:.1f}x fused mean_max; absorb every 10"
    for bt, warps in args.sinkhorn_bt:
        from finealign.kernels.sinkhorn_triton import sinkhorn_triton

        add_flow(
            f"fused sinkhorn bt={bt} w={warps}",
            lambda: sinkhorn_triton(v, vm, t, tm, SinkhornOptions(captions_per_program=bt, num_warps=warps), **imp),
            reps=min(1, repeats),
        )
    # Batched torch solver on a slice of images, extrapolated to the full matrix.
    sub_v = min(nv, max(4, int(2e5 / nt)))  # about 200k pairs
    sec_sub, out, _ = timed(
        lambda: sinkhorn_flow_scores(
            v[:sub_v],
            vm[:sub_v],
            t,
            tm,
            backend="torch",
            chunk_visual=4,
            chunk_text=4096,
            visual_pooled=vp[:sub_v],
            text_pooled=tp,
        ),
        1,
    )
    scale = nv / sub_v
    rows.append(
        dict(
            size=name,
            task="tokenflow",
            method=f"torch batched solver ({sub_v} imgs)",
            ms=sec_sub * scale * 1e3,
            x_floor=sec_sub * scale / floor,
            rel_err=rel_err(check(out), ref),
            note=f"extrap. x{scale:.0f}",
        )
    )
    print(f"  tokenflow torch batched solver  {sec_sub * scale * 1e3:10.1f} ms (extrap. from {sub_v} images)")
    try:
        import ot
    except ImportError:
        print("[skip] POT not importable")
    else:
        pairs = min(64, nt)
        vc, tc = v[:1].double().cpu(), t[:pairs].double().cpu()
        vmc, tmc = vm[:1].cpu(), tm[:pairs].cpu()
        start = time.perf_counter()
        got = []
        for j in range(pairs):
            x, y = vc[0][vmc[0]], tc[j][tmc[j]]
            sim = x @ y.T
            a = torch.softmax(x @ tp[j].double().cpu() / 0.1, 0)  # importance marginals, τ = 0.1
            b = torch.softmax(y @ vp[0].double().cpu() / 0.1, 0)
            plan = ot.sinkhorn(
                a.numpy(), b.numpy(), (1 - sim).numpy(), 0.1, method="sinkhorn_log", numItermax=20, stopThr=0.0
            )
            got.append(float((torch.from_numpy(plan) * sim).sum()))
        sec = (time.perf_counter() - start) / pairs * nv * nt
        err = float((torch.tensor(got) - ref[0, :pairs].cpu()).norm() / ref[0, :pairs].cpu().norm())
        rows.append(
            dict(
                size=name,
                task="tokenflow",
                method="POT ot.sinkhorn per pair (CPU)",
                ms=sec * 1e3,
                x_floor=sec / floor,
                rel_err=err,
                note=f"extrap. from {pairs} pairs",
            )
        )
        print(f"  tokenflow POT per pair          {sec * 1e3:10.0f} ms (extrap. from {pairs} pairs) rel_err {err:.1e}")
    try:
        from geomloss import SamplesLoss
    except ImportError:
        print("[skip] geomloss not importable")
    else:
        batch = 256
        loss = SamplesLoss("sinkhorn", p=2, blur=math.sqrt(0.1), scaling=0.9, backend="tensorized")
        x = v[:1].float().expand(batch, -1, -1).contiguous()
        y = t[:batch].float()
        sec, _, _ = timed(lambda: loss(x, y), 1)
        rows.append(
            dict(
                size=name,
                task="tokenflow",
                method=f"geomloss tensorized ({batch} pairs)",
                ms=sec * nv * nt / batch * 1e3,
                x_floor=sec * nv * nt / batch / floor,
                note="extrap.; timing only (ε-scaling, debiased, squared-Euclidean cost)",
            )
        )


def shortlist_pairs(v, vm, t, tm, k):
    """(P, 2) union of every image's top-k captions and every caption's top-k images by the cosine
    of the masked token means — the pairs two_stage re-ranks."""
    glob = pooled(v, vm) @ pooled(t, tm).T
    keep = torch.zeros_like(glob, dtype=torch.bool)
    keep.scatter_(1, glob.topk(min(k, glob.shape[1]), dim=1).indices, True)
    keep.scatter_(0, glob.topk(min(k, glob.shape[0]), dim=0).indices, True)
    return keep.nonzero()


def bench_shortlist(rows, v, vm, t, tm, repeats, args, add):
    """two_stage's second stage: local scores of the shortlisted pairs only."""
    pairs = shortlist_pairs(v, vm, t, tm, args.top_k)
    ref = maxsim_scores(v.double(), vm, t.double(), tm, "mean", "text", backend="torch", pairs=pairs)
    note = f"{len(pairs)} pairs (top-{args.top_k} union)"
    add(
        "shortlist",
        "mean_max pair kernel",
        lambda: maxsim_scores(v, vm, t, tm, "mean", "text", backend="triton", pairs=pairs),
        ref,
        note,
    )
    add(
        "shortlist",
        "mean_max torch pairs",
        lambda: maxsim_scores(v, vm, t, tm, "mean", "text", backend="torch", pairs=pairs),
        ref,
        note,
    )
    visual, text = TokenBatch(v, vm), TokenBatch(t, tm)
    for local, options in (("mean_max", {}), ("tokenflow", dict(iterations=20, tolerance=0, epsilon=0.1))):
        for backend in ("triton", "torch"):
            if local == "tokenflow" and backend == "torch" and v.shape[0] * t.shape[0] > 1e6:
                continue  # the torch solver on 10^5 pairs takes minutes
            aligner = create_aligner(
                "two_stage", local=local, top_k=args.top_k, local_options=dict(options, backend=backend)
            )
            add(
                "shortlist",
                f"two_stage aligner, local {local} ({backend})",
                lambda: aligner(visual, text),
                None,
                "whole aligner: global stage + shortlist + re-rank",
                reps=min(1, repeats),
            )
    if not args.no_sinkhorn:
        imp = dict(visual_pooled=pooled(v, vm), text_pooled=pooled(t, tm))
        for domain in ("log", "scaling"):
            add(
                "shortlist",
                f"sinkhorn pair kernel ({domain})",
                lambda: sinkhorn_flow_scores(v, vm, t, tm, backend="triton", pairs=pairs, domain=domain, **imp),
                None,
                note,
            )


def tokenflow_step(v, vm, t, tm, backend):
    """One tokenflow training step through the aligner (the torch path checkpoints each block)."""
    aligner = create_aligner("tokenflow", iterations=20, tolerance=0, epsilon=0.1, backend=backend).train()
    leaves = [x.detach().requires_grad_() for x in (v, t, pooled(v, vm), pooled(t, tm))]
    aligner(TokenBatch(leaves[0], vm, leaves[2]), TokenBatch(leaves[1], tm, leaves[3])).float().sum().backward()
    return None


def train_step(v, vm, t, tm, backend):
    a, b = v.detach().requires_grad_(), t.detach().requires_grad_()
    maxsim_scores(a, vm, b, tm, "mean", "both", backend=backend).float().sum().backward()
    return None


def parse_tiles(text: str) -> list[Tiles]:
    """'2,4,64,8,3;5,4,64,8,3,p' -> Tiles(items_visual, items_text, block_k, num_warps, num_stages[, packed])."""
    tiles = []
    for part in filter(str.strip, text.split(";")):
        fields = part.split(",")
        packed = fields[-1].strip() == "p"
        tiles.append(Tiles(*map(int, fields[:5]), packed=packed))
    return tiles


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="tiny,small,flickr30k,coco5k", help=f"comma list of {list(SIZES)}")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--tiles",
        type=parse_tiles,
        default=[],
        help="extra Triton tiles to time: 'bv,bt,bk,warps,stages[,p];...' (p = packed)",
    )
    p.add_argument(
        "--sinkhorn-bt",
        type=lambda s: [tuple(map(int, x.split(":"))) for x in s.split(",") if x],
        default=[],
        help="extra 'captions_per_program:num_warps' pairs to time for the fused Sinkhorn",
    )
    p.add_argument("--no-sinkhorn", action="store_true")
    p.add_argument("--top-k", type=int, default=20, help="two_stage shortlist length for the shortlist rows")
    p.add_argument("--no-peers", action="store_true", help="skip late-interaction-kernels and flash-maxsim")
    p.add_argument("--out", type=Path, default=None, help="folder for kernels.csv and kernels.md")
    p.add_argument(
        "--cpu-smoke", action="store_true", help="run on CPU (set TRITON_INTERPRET=1): checks the script only"
    )
    args = p.parse_args()
    global DEVICE
    if args.cpu_smoke:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernels.py needs a CUDA GPU (or --cpu-smoke with TRITON_INTERPRET=1)")
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (Triton interpreter; timings meaningless)"
    print(f"device: {name}, torch {torch.__version__}")
    rows = []
    for name in args.sizes.split(","):
        rows += bench_size(name, *SIZES[name], args.repeats, args)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    table = pd.DataFrame(rows)
    fused = table[(table.method == "fused triton") & (table.task == "mean_max")].set_index("size")["ms"]
    table["x_fused_mean_max"] = table["ms"] / table["size"].map(fused)
    cols = ["size", "task", "method", "ms", "x_floor", "x_fused_mean_max", "rel_err", "extra_MiB", "note"]
    table = table.reindex(columns=cols)
    print()
    print(table.to_markdown(index=False, floatfmt=".3g"))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "kernels.csv", index=False)
        (args.out / "kernels.md").write_text(table.to_markdown(index=False, floatfmt=".3g") + "\n")


if __name__ == "__main__":
    main()
