"""Gallery-scale retrieval cost: brute-force global matrix vs FAISS first stage vs two-stage re-ranking.

    PYTHONPATH=src python benchmarks/gallery_scale.py --sizes 10000 100000 \\
        --scratch /work/scratch/gallery --out benchmarks/results/gallery-scale
    PYTHONPATH=src python benchmarks/gallery_scale.py --sizes 1000000 ...   # appends to the same CSV

For each size N it writes a synthetic caption gallery to --scratch (N captions × 32 tokens × d=256,
float16 token memory map + float32 global vectors, clustered so that nearest neighbours exist),
builds a FAISS Flat and an IVF index (and HNSW up to --hnsw-max), then times image queries
(36 region tokens, each near one gallery caption) in a fresh subprocess per method, so each
method's resident memory is its own:

* brute: the global matrix as two_stage computes it — every global vector in RAM, q · Gᵀ, top-100;
* flat / ivf / hnsw: the index's top-100 (recall@10 and @100 of the approximate ones vs Flat);
* rerank <index> <aligner>: the index's top-100 re-ranked by mean_max or hard, tokens read from
  the memory map for the shortlisted items only — timed twice: "cold" (the token file's pages
  evicted from the page cache first, POSIX_FADV_DONTNEED on that file only) and "warm" (the same
  queries again); `#noprefetch` reads by page faults alone (no POSIX_FADV_WILLNEED).

Latency is per query (median and IQR over --queries queries after --warmup), one query at a time
as a serving process sees them, with torch on --torch-threads threads (default 1: on 2 busy shared
cores, a 100-item re-rank with 2 torch threads measured 4-7x slower than with 1, the OpenMP workers
waiting on each other); FAISS searches one query on one thread. RSS from
/proc/self/status (VmRSS after the queries, VmHWM peak). Results of all sizes measured so far are
kept in <out>/gallery_scale.csv; the table (with log-log exponents of latency vs N over the sizes
present) goes to <out>/gallery_scale.md and stdout. Galleries are deleted after measuring unless
--keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

DIM = 256
CAPTION_TOKENS = 32
REGIONS = 36
CLUSTERS = 1024
SHORTLIST = 100


def status_mb() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in MiB (Linux /proc)."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out


# -- building -----------------------------------------------------------------------------------
def build(folder: Path, count: int, hnsw_max: int, chunk: int = 8192) -> dict[str, float]:
    from finealign.search import GalleryWriter, IndexSpec, read_manifest

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    writer = GalleryWriter(folder, count=count, total_tokens=count * CAPTION_TOKENS, dim=DIM, modality="text",
                           feature_source=f"synthetic-clustered-d{DIM}-seed0")  # fmt: skip
    generate = 0.0
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        t0 = time.perf_counter()
        item = centers[rng.integers(0, CLUSTERS, n)] + 0.7 * rng.standard_normal((n, DIM), dtype=np.float32)
        tokens = (item[:, None, :] + rng.standard_normal((n, CAPTION_TOKENS, DIM), dtype=np.float32)).astype(np.float16)
        generate += time.perf_counter() - t0
        writer.add(tokens, np.ones((n, CAPTION_TOKENS), dtype=bool))
    indexes = {"flat": IndexSpec("flat"), "ivf": IndexSpec("ivf", ivf_probe=32)}
    if count <= hnsw_max:
        indexes["hnsw"] = IndexSpec("hnsw", hnsw_m=32, hnsw_ef_construction=80, hnsw_ef_search=128)
    writer.finish(indexes)
    manifest = read_manifest(folder)
    out = {"generate_s": generate, "store_write_s": manifest["seconds_store"] - generate,
           "store_gb": manifest["arrays"]["tokens.npy"]["bytes"] / 1e9}  # fmt: skip
    out.update({f"build_{name}_s": rec["build_seconds"] for name, rec in manifest["indexes"].items()})
    out["ivf_lists"] = indexes["ivf"].resolved_lists(count)
    return out


def make_queries(folder: Path, count: int, path: Path, seed: int = 1) -> None:
    """Image queries: 36 region tokens around the token mean of a random gallery caption."""
    from finealign.search import TokenStore

    rng = np.random.default_rng(seed)
    store = TokenStore(folder)
    source = rng.choice(len(store), size=count, replace=False)
    centers = store.read(source).tokens.mean(1).numpy()
    tokens = centers[:, None, :] + rng.standard_normal((count, REGIONS, DIM), dtype=np.float32)
    np.save(path, tokens.astype(np.float32))


# -- measuring (in a subprocess per method) -----------------------------------------------------
def evict(path: Path) -> None:
    """Drop this one file's pages from the page cache (POSIX_FADV_DONTNEED): the next reads come from disk."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def measure(folder: Path, method: str, queries_path: Path, warmup: int, ids_path: Path, threads: int) -> dict:
    import torch

    from finealign.registry import create_aligner
    from finealign.search import Gallery
    from finealign.tokens import TokenBatch

    torch.set_num_threads(threads)
    base = status_mb()
    all_queries = torch.from_numpy(np.load(queries_path))
    batches = [TokenBatch(q[None], torch.ones(1, REGIONS, dtype=torch.bool)) for q in all_queries]
    method, _, variant = method.partition("#")
    kind, _, aligner_name = method.partition(":")
    if kind == "brute":
        glob = torch.from_numpy(np.load(folder / "global.npy"))  # every global vector in RAM

        def run(q):
            from finealign.aligners.base import global_vectors
            from finealign.kernels.normalize import l2_normalize

            return (l2_normalize(global_vectors(q)) @ glob.T).topk(SHORTLIST, dim=1).indices.numpy()
    else:
        gallery = Gallery(folder, index=kind)
        gallery.store.prefetch = variant != "noprefetch"
        aligner = create_aligner(aligner_name) if aligner_name else None

        def run(q):
            if aligner is None:
                return gallery.query(q, SHORTLIST).ids
            return gallery.query(q, 10, rerank=aligner, shortlist=SHORTLIST).ids

    loaded = status_mb()
    passes = {}
    with torch.inference_mode():
        for q in batches[:warmup]:
            run(q)
        # Re-ranking reads tokens from the memory map: time it from disk (this file's pages evicted
        # from the page cache first), then the same queries again from the page cache.
        for name in ("cold", "warm") if aligner_name else ("ram",):
            if name == "cold":
                evict(folder / "tokens.npy")
            times, ids = [], []
            for q in batches[warmup:]:
                start = time.perf_counter()
                ids.append(run(q))
                times.append((time.perf_counter() - start) * 1e3)
            passes[name] = times
    np.save(ids_path, np.concatenate(ids))
    end = status_mb()
    return {"passes": passes, "rss_base_mb": base["VmRSS"], "rss_loaded_mb": loaded["VmRSS"],
            "rss_mb": end["VmRSS"], "rss_peak_mb": end["VmHWM"], "rss_file_mb": end["RssFile"],
            "threads_torch": torch.get_num_threads(), "loadavg_1min": os.getloadavg()[0]}  # fmt: skip


def run_method(folder: Path, method: str, queries_path: Path, warmup: int, work: Path, threads: int) -> dict:
    method, _, own_threads = method.partition("@")  # "ivf:mean_max@2": this row with 2 torch threads
    threads = int(own_threads or threads)
    ids_path = work / f"ids-{method.replace(':', '-').replace('#', '-')}-{threads}.npy"
    cmd = [sys.executable, __file__, "--measure", method, "--gallery", str(folder), "--queries-file",
           str(queries_path), "--warmup", str(warmup), "--ids-file", str(ids_path), "--torch-threads", str(threads)]  # fmt: skip
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["ids"] = np.load(ids_path)
    return result


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found top-k ∩ truth top-k| / k."""
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


def measure_size(count: int, args: argparse.Namespace) -> list[dict]:
    from finealign.profiling.timing import summarize

    folder = args.scratch / f"captions-{count}"
    work = args.scratch / f"work-{count}"
    work.mkdir(parents=True, exist_ok=True)
    if folder.exists() and not (folder / "manifest.json").exists():
        shutil.rmtree(folder)
    start = time.perf_counter()
    built = build(folder, count, args.hnsw_max) if not folder.exists() else {}
    build_wall = time.perf_counter() - start
    print(f"[{count}] built in {build_wall:.1f} s: {built}", flush=True)
    queries_path = work / "queries.npy"
    make_queries(folder, args.queries + args.warmup, queries_path)
    methods = ["brute", "flat", "ivf"] + (["hnsw"] if count <= args.hnsw_max else [])
    methods += [f"{index}:{aligner}" for index in ("flat", "ivf") for aligner in ("mean_max", "hard")]
    methods.append("ivf:mean_max@2")  # the same row with 2 torch threads: why the default is 1
    methods.append("ivf:mean_max#noprefetch")  # the same row reading by page faults alone
    results = {}
    for method in methods:
        results[method] = run_method(folder, method, queries_path, args.warmup, work, args.torch_threads)
        medians = ", ".join(f"{k} {np.median(v):.2f}" for k, v in results[method]["passes"].items())
        print(f"[{count}] {method}: median ms {medians}", flush=True)
    rows = []
    for method, res in results.items():
        for name, times in res["passes"].items():
            stats = summarize(times, "perf_counter")
            row = {"gallery": count, "method": method, "tokens_from": name, "median_ms": stats.median_ms,
                   "q25_ms": stats.q25_ms, "q75_ms": stats.q75_ms, "iqr_ms": stats.iqr_ms, "queries": stats.repeats,
                   "rss_mb": res["rss_mb"], "rss_peak_mb": res["rss_peak_mb"], "rss_file_mb": res["rss_file_mb"],
                   "rss_loaded_mb": res["rss_loaded_mb"], "rss_base_mb": res["rss_base_mb"],
                   "torch_threads": res["threads_torch"], "loadavg_1min": res["loadavg_1min"]}  # fmt: skip
            if method in ("ivf", "hnsw", "brute"):  # brute must agree with Flat (ties aside)
                row["recall@10_vs_flat"] = recall(res["ids"], results["flat"]["ids"], 10)
                row["recall@100_vs_flat"] = recall(res["ids"], results["flat"]["ids"], SHORTLIST)
            index, _, rest = method.partition(":")
            exact = "flat:" + rest.split("@")[0].split("#")[0]
            if index != "flat" and rest and exact in results:
                # the final top-10 after re-ranking, against re-ranking Flat's exact shortlist
                row["recall@10_vs_flat"] = recall(res["ids"], results[exact]["ids"], 10)
            row.update(built)
            row["build_wall_s"] = build_wall
            rows.append(row)
    if not args.keep:
        shutil.rmtree(folder)
    shutil.rmtree(work)
    return rows


def exponents(table: pd.DataFrame) -> pd.Series:
    """Slope of log(median latency) vs log(gallery size) per method, over the sizes present."""
    out = {}
    for (method, source), group in table.groupby(["method", "tokens_from"]):
        if group["gallery"].nunique() >= 2:
            out[f"{method} ({source})"] = float(np.polyfit(np.log(group["gallery"]), np.log(group["median_ms"]), 1)[0])
    return pd.Series(out, name="latency_exponent")


def report(csv: Path, md: Path) -> str:
    table = pd.read_csv(csv).sort_values(["gallery", "method", "tokens_from"])
    shown = table[["gallery", "method", "tokens_from", "median_ms", "q25_ms", "q75_ms", "queries", "rss_mb",
                   "rss_peak_mb", "recall@10_vs_flat", "recall@100_vs_flat", "loadavg_1min"]]  # fmt: skip
    builds = table.groupby("gallery").first()[[c for c in table.columns if c.startswith(("build_", "generate",
                                                                                          "store_", "ivf_lists"))]]  # fmt: skip
    text = "\n\n".join([
        shown.to_markdown(index=False, floatfmt=".3g"),
        builds.to_markdown(floatfmt=".3g"),
        exponents(table).to_frame().to_markdown(floatfmt=".3f"),
    ])  # fmt: skip
    md.write_text(text + "\n", encoding="utf-8")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--scratch", type=Path, default=Path("/work/scratch/gallery"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gallery-scale"))
    parser.add_argument("--queries", type=int, default=30, help="timed queries per method (>= 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="build HNSW only up to this size (slow build)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads while timing queries")
    parser.add_argument("--keep", action="store_true", help="keep the galleries in --scratch")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--gallery", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ids-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(
            json.dumps(
                measure(args.gallery, args.measure, args.queries_file, args.warmup, args.ids_file, args.torch_threads)
            )
        )
        return
    args.out.mkdir(parents=True, exist_ok=True)
    csv = args.out / "gallery_scale.csv"
    print(f"nproc={os.cpu_count()} sched_affinity={len(os.sched_getaffinity(0))}", flush=True)
    for count in args.sizes:
        start = time.perf_counter()
        rows = pd.DataFrame(measure_size(count, args))
        rows["size_wall_s"] = time.perf_counter() - start
        rows["nproc"] = len(os.sched_getaffinity(0))
        rows["loadavg_1min_end"] = os.getloadavg()[0]  # the 2 cores are shared: how busy they were
        old = pd.read_csv(csv) if csv.exists() else pd.DataFrame()
        if len(old):
            old = old[old["gallery"] != count]
        pd.concat([old, rows], ignore_index=True).to_csv(csv, index=False)
        print(report(csv, args.out / "gallery_scale.md"), flush=True)


if __name__ == "__main__":
    main()
