"""Profile every registered aligner at Flickr30K-test scale on whatever device is present.

    python benchmarks/profile_aligners.py                      # cuda+bf16 if available, else cpu
    python benchmarks/profile_aligners.py --scale full --device cuda --trace
    python benchmarks/profile_aligners.py --scale small --aligners mean_max,hard

Scales (N images x 5N captions, 50 visual x 32 text tokens, d=512):
    full   = 1000 x 5000 (Flickr30K test)     default on CUDA
    medium =  100 x  500
    small  =   20 x  100                       default on CPU (tokenflow / cross_attention are
                                               far too slow on CPU at full scale)
One aligner that fails prints its error row; the others still run. Needs only torch (pandas and
tabulate for the tables when present); no hydra, optuna or POT.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import torch

from finealign.profiling.device import environment, pinned_threads, resolve_device
from finealign.profiling.inputs import ProblemShape
from finealign.profiling.measure import ProfileSettings, profile_aligners, resolve_aligners

SCALES = {
    "full": ProblemShape(nv=1000, nt=5000, lv=50, lt=32, dim=512),
    "medium": ProblemShape(nv=100, nt=500, lv=50, lt=32, dim=512),
    "small": ProblemShape(nv=20, nt=100, lv=50, lt=32, dim=512),
}
COLUMNS = [
    "aligner",
    "latency_ms",
    "latency_iqr_ms",
    "latency_min_ms",
    "latency_max_ms",
    "repeats",
    "peak_mem_mib",
    "gflop",
    "achieved_tflops",
    "frac_of_matmul_peak",
    "error",
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] (auto: cuda if available)")
    p.add_argument("--scale", choices=sorted(SCALES), default=None, help="default: full on cuda, small on cpu")
    p.add_argument("--dtype", default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--aligners", default="all", help="'all' or a comma list of registered names")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--budget", type=float, default=30.0, help="seconds of timed calls per aligner")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's setting)")
    p.add_argument("--backward", action="store_true", help="time forward+backward instead")
    p.add_argument("--trace", action="store_true", help="also write TensorBoard traces")
    p.add_argument("--out", default="runs/profile/benchmark", help="where the CSV/MD tables go")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device_spec = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = resolve_device(device_spec)
    scale = args.scale or ("full" if device.type == "cuda" else "small")
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    shape = SCALES[scale]
    names = resolve_aligners(args.aligners)
    settings = ProfileSettings(
        device=device_spec,
        dtype=dtype,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        backward=args.backward,
        time_budget_s=args.budget,
    )
    with pinned_threads(args.threads if device.type == "cpu" else None):
        env = environment(device)
    print("finealign aligner profile")
    for key, value in env.items():
        print(f"  {key:12s} {value}")
    print(
        f"  scale        {scale}: {shape.nv} images x {shape.nt} captions, {shape.lv} visual x "
        f"{shape.lt} text tokens, d={shape.dim}, dtype={dtype}, "
        f"{'forward+backward' if args.backward else 'inference'}"
    )
    print(f"  aligners     {', '.join(names)}")
    print(
        f"  method       warm-up {args.warmup}, up to {args.repeats} repeats within {args.budget:g}s "
        "per aligner; median and spread; peak memory over the inputs\n",
        flush=True,
    )

    rows = []
    for name in names:  # one at a time, so each result is printed as soon as it exists
        try:
            rows += profile_aligners([name], shape, settings, progress=False)
        except Exception as exc:  # profile_aligners already catches per-aligner errors; be safe
            traceback.print_exc()
            rows.append({"aligner": name, "error": f"{type(exc).__name__}: {exc}"})
        print(_row_line(rows[-1]), flush=True)

    print()
    print(_table(rows))
    _save(rows, Path(args.out), env, args.trace, names, shape, settings)
    return 0 if all(not r.get("error") for r in rows) else 1


def _row_line(row: dict) -> str:
    if row.get("error"):
        return f"  {row['aligner']:<18} ERROR {row['error']}"
    return (
        f"  {row['aligner']:<18} {row['latency_ms']:10.3f} ms  (IQR {row['latency_iqr_ms']:.3f}, "
        f"n={row['repeats']})  mem {row.get('peak_mem_mib', float('nan')):9.1f} MiB  "
        f"{row.get('gflop', float('nan')):9.2f} GFLOP  "
        f"{100 * row.get('frac_of_matmul_peak', float('nan')):5.1f}% of matmul peak"
    )


def _table(rows) -> str:
    try:
        from finealign.profiling.outputs import markdown, to_frame

        df = to_frame(rows)
        return markdown(df[[c for c in COLUMNS if c in df.columns]])
    except ImportError:  # no pandas on this machine: the per-row lines above are the table
        return "(pandas not installed: see the per-aligner lines above)"


def _save(rows, out_root: Path, env, trace, names, shape, settings) -> None:
    try:
        from finealign.profiling.outputs import header, write_table
        from finealign.profiling.pipeline import timestamp

        out_dir = out_root / timestamp()
        csv_path, md_path = write_table(rows, out_dir, "profile")
        (out_dir / "environment.txt").write_text(header(env) + "\n", encoding="utf-8")
        print(f"\nwritten: {csv_path}, {md_path}")
        if trace:
            from finealign.profiling.pipeline import trace_aligners

            ok = [r["aligner"] for r in rows if not r.get("error")]
            trace_dir = out_root / "traces" / out_dir.name
            tops, _ = trace_aligners(ok, shape, settings, trace_dir)
            for name, ops in tops.items():
                print(f"\ntop ops by self time — {name}:")
                for op in ops[:5]:
                    print(f"  {op['op']:<40} {op['self_pct']:5.1f}%  ({op['calls']} calls)")
            print(
                f"\ntraces: {trace_dir}  (view: pip install torch-tb-profiler; "
                f"tensorboard --logdir {out_root / 'traces'})"
            )
    except ImportError as exc:
        print(f"\n(tables not written: {exc})")


if __name__ == "__main__":
    sys.exit(main())
