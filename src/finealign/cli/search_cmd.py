"""`finealign search build|query`: a stored gallery with a FAISS first stage, queried from the shell.

    finealign search build GALLERY --cache ENTRY [--modality text] [--index flat] [--index ivf:ivf_probe=32]
    finealign search build GALLERY --tokens t.npy [--mask m.npy] [--pooled p.npy] --source NAME
    finealign search query GALLERY --cache ENTRY --ids 0 1 [--rerank mean_max] [--top-k 10] [--index ivf]
    finealign search query GALLERY --tokens q.npy [--mask qm.npy] [--source NAME]
    finealign search verify GALLERY [GALLERY ...]      # sizes, SHA-256, offsets, finite vectors; exit 1 if damaged

A cache gallery holds one modality of the entry (captions by default); its queries are items of
the other modality (of any cache entry made by the same encoders). Index specs are
`name` or `name:key=value,...` with name flat|ivf|hnsw and the knobs of finealign.ann.IndexSpec.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finealign.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="write a gallery (token memory map + FAISS indexes)")
    build.add_argument("gallery", type=Path, help="new folder for the gallery")
    _add_feature_arguments(build)
    build.add_argument(
        "--modality",
        default="text",
        choices=("text", "visual"),
        help="with --cache: which side becomes the gallery (default: captions)",
    )
    build.add_argument(
        "--index", action="append", metavar="KIND[:KEY=VALUE,...]", help="an index to build (repeatable; default: flat)"
    )
    build.add_argument(
        "--no-normalize", action="store_true", help="index raw global vectors (inner product, not cosine)"
    )
    query = sub.add_parser("query", help="rank queries against a gallery and print the top-K")
    query.add_argument("gallery", type=Path)
    _add_feature_arguments(query)
    query.add_argument("--ids", type=int, nargs="+", help="with --cache: which items query (default: the first 5)")
    query.add_argument("--index", help="which of the gallery's indexes (default: the first built)")
    query.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="query-time index knob, e.g. ivf_probe=64 or hnsw_ef_search=256",
    )
    query.add_argument("--top-k", type=int, default=10)
    query.add_argument("--rerank", help="registered aligner that re-ranks the shortlist (mean_max, hard, two_stage), "
                       "or `model`: the --ckpt model's own trained aligner")  # fmt: skip
    query.add_argument("--shortlist", type=int, help="first-stage candidates re-ranked per query (default 100)")
    verify = sub.add_parser("verify", help="check galleries against their manifests (sizes, SHA-256, finite vectors)")
    verify.add_argument("galleries", type=Path, nargs="+")


def _add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=Path, help="a feature cache entry folder (finealign cache)")
    parser.add_argument("--tokens", type=Path, help="(N, L, d) tokens .npy")
    parser.add_argument("--mask", type=Path, help="(N, L) bool mask .npy (default: all real)")
    parser.add_argument("--pooled", type=Path, help="(N, d) pooled vectors .npy (default: token mean)")
    parser.add_argument("--source", help="with --tokens: name of the features (model) they come from")
    parser.add_argument("--ckpt", type=Path, help="a trained model.pt: encode --split with its own towers")
    parser.add_argument("--split", default="test", help="with --ckpt: which split of the model's dataset")


def parse_index(text: str) -> tuple[str, Any]:
    """`ivf:ivf_lists=64,ivf_probe=8` → ("ivf", IndexSpec)."""
    from finealign.ann import IndexSpec

    kind, _, knobs = text.partition(":")
    return kind, IndexSpec.from_options(kind, _pairs(knobs.split(",") if knobs else []), f"--index {text!r}")


def _pairs(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE knobs, values read by Hydra's grammar like every other finealign override."""
    from finealign.overrides import parse

    out = {}
    for override in parse(items):
        if override.is_sweep_override() or override.is_delete() or override.is_add() or override.is_force_add():
            raise ConfigError(f"expected a plain KEY=VALUE knob, got {override.input_line!r}")
        out[override.key_or_group] = override.value()
    return out


@dataclass
class Features:
    """One side's features and where they come from; with --ckpt also the model (its aligner can
    re-rank) and the split's caption texts (to print what was retrieved)."""

    tokens: Any
    mask: Any
    pooled: Any
    source: str | None
    model: Any = None
    captions: list[str] | None = None


def _features(args: argparse.Namespace, modality: str, only: list[int] | None = None) -> Features:
    """Features from --cache (one modality), --ckpt (a trained model's towers over --split: every
    item, or the `only` ones in that order) or --tokens/--mask/--pooled."""
    from finealign.search.sources import array_side, cache_side

    given = [name for name in ("cache", "ckpt", "tokens") if getattr(args, name) is not None]
    if len(given) != 1:
        raise ConfigError(
            f"give exactly one of --cache ENTRY, --ckpt MODEL.pt or --tokens FILE (got {given or 'none'})"
        )
    if args.cache is not None:
        return Features(*cache_side(args.cache, modality))
    if args.ckpt is not None:
        from finealign.devices import resolve_device
        from finealign.engine.experiment import load_trained_model
        from finealign.engine.export import checkpoint_feature_source, split_features
        from finealign.registry import create_dataset

        model, spec = load_trained_model(args.ckpt, ["device=cpu"])
        dname, doptions = spec.data
        split = create_dataset(dname, **doptions).split(args.split)
        arrays = split_features(model, split, modality, only=only, device=resolve_device("cpu"))
        source = checkpoint_feature_source(args.ckpt)
        return Features(*arrays, source, model=model, captions=_caption_texts(spec.data, split, args.split))
    return Features(*array_side(args.tokens, args.mask, args.pooled), args.source)


def _caption_texts(data: tuple[str, dict], split: Any, name: str) -> list[str] | None:
    """The split's captions as text: its own, or — for a feature-cached dataset, whose captions are
    feature rows — those of the raw dataset it wraps. None when neither is text."""
    from finealign.registry import create_dataset

    captions = split.captions
    if data[0] == "cached":
        options = data[1]
        captions = create_dataset(options["dataset"], **dict(options.get("dataset_options") or {})).split(name).captions
    return [str(c) for c in captions] if len(captions) and isinstance(captions[0], str) else None


def build(args: argparse.Namespace) -> int:
    from finealign.search import read_manifest, write_gallery

    features = _features(args, args.modality)
    tokens, mask, pooled, source = features.tokens, features.mask, features.pooled, features.source
    if source is None:
        raise ConfigError("--tokens needs --source NAME: the features' origin, checked against every query")
    indexes = dict(parse_index(spec) for spec in (args.index or ["flat"]))
    folder = write_gallery(args.gallery, tokens, mask, pooled, modality=args.modality, feature_source=source,
                           indexes=indexes, normalize=not args.no_normalize)  # fmt: skip
    manifest = read_manifest(folder)
    print(f"{folder}: {manifest['count']} {args.modality} items, d={manifest['dim']}, "
          f"{manifest['total_tokens']} tokens, indexes {sorted(manifest['indexes'])}, from {source}")  # fmt: skip
    return 0


def query(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd
    import torch

    from finealign.registry import create_aligner
    from finealign.search import Gallery
    from finealign.tokens import TokenBatch

    gallery = Gallery(args.gallery, index=args.index, knobs=_pairs(args.knob))
    side = "visual" if gallery.modality == "text" else "text"
    if args.ckpt is not None and args.ids is not None:  # encode only the queries asked for
        f = _features(args, side, only=args.ids)
        ids, rows_of = np.asarray(args.ids, dtype=np.int64), np.arange(len(args.ids))
    else:
        f = _features(args, side)
        ids = np.asarray(args.ids if args.ids is not None else range(min(5, len(f.tokens))), dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(f.tokens)):
            raise ConfigError(f"--ids must lie in [0, {len(f.tokens)}), got {ids.tolist()}")
        rows_of = ids
    batch = TokenBatch(torch.from_numpy(np.array(f.tokens[rows_of], dtype=np.float32)), torch.from_numpy(np.array(f.mask[rows_of], dtype=bool)),
                       None if f.pooled is None else torch.from_numpy(np.array(f.pooled[rows_of], dtype=np.float32)))  # fmt: skip
    aligner = create_aligner(args.rerank) if args.rerank and args.rerank != "model" else None
    if args.rerank == "model":
        if f.model is None:
            raise ConfigError("--rerank model re-ranks with a checkpoint's own aligner: give --ckpt")
        aligner = f.model.aligner.eval()
    result = gallery.query(batch, args.top_k, rerank=aligner, shortlist=args.shortlist, feature_source=f.source)
    rows: list[dict[str, Any]] = [{"query": int(q), "rank": r + 1, "item": int(result.ids[i, r]), "score": float(result.scores[i, r]),
             "global": float(result.global_scores[i, r])}
            for i, q in enumerate(ids) for r in range(result.ids.shape[1]) if result.ids[i, r] >= 0]  # fmt: skip
    if f.captions is not None and gallery.modality == "text":
        for row in rows:  # a gallery of this split's captions: show what was retrieved
            row["caption"] = f.captions[int(row["item"])][:70]
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    return 0


def verify(args: argparse.Namespace) -> int:
    """Every gallery's status ("ok", "damaged", "unverifiable") and problems; exit 1 if one is damaged."""
    from finealign.errors import DataError
    from finealign.search import verify_gallery

    damaged = 0
    for folder in args.galleries:
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a gallery folder ({'a file' if folder.exists() else 'missing'})")
        try:
            status, problems = verify_gallery(folder)
        except DataError as exc:  # no finished manifest
            status, problems = "damaged", [str(exc)]
        damaged += status == "damaged"
        print(f"{status:12s} {folder}" + "".join(f"\n             {p}" for p in problems))
    return 1 if damaged else 0


def run(args: argparse.Namespace) -> int:
    return {"build": build, "query": query, "verify": verify}[args.action](args)
