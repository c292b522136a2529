"""Build (or reuse) the feature cache of one dataset split under a pair of frozen encoders.

Encoders run once, with no projection (embed_dim=0: raw backbone features), so learned heads live
downstream and many experiments share one cache. The entry's key hashes everything the features
depend on: encoder names, complete options and weight-file identities, the data files' identity,
the split and max_items. A changed option, checkpoint or annotation file gives a new key; a
replaced image file makes the entry stale (cache.freshness: meta.json records every item file),
and it is rebuilt. Writing checks the free disk space first and reserves every memory-mapped file,
so a full disk is a DiskFullError that leaves no half entry, never a SIGBUS.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finealign.cache.encode import encode_items, pad_stack
from finealign.cache.freshness import RECORD, changed_items, item_records, write_record
from finealign.cache.keys import cache_key, default_cache_dir
from finealign.checks import check_positive_int
from finealign.errors import ConfigError
from finealign.formats.feature_cache import (
    FORMAT_VERSION,
    finish_entry,
    is_complete,
    quick_problems,
    read_meta,
    save_array,
    verify_entry,
)
from finealign.registry import create_dataset, create_encoder
from finealign.resources import check_disk, disk_full_error, is_disk_full, preallocate

log = logging.getLogger(__name__)


def _options_of(component: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The complete options (defaults filled in), so `{}` and the spelled-out defaults share a key."""
    config = getattr(component, "config", None)
    if config is not None and dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return dict(given)


def _encoder_identity(name: str, encoder: Any, given: dict[str, Any], stage: str | None = None) -> dict[str, Any]:
    """What the features depend on. "stage" is there only for a staged entry, so an unstaged
    entry's key is what it was before stages existed."""
    weights = getattr(encoder, "weights_identity", None)
    identity = {"name": name, "options": _options_of(encoder, given), "weights": weights() if weights else {}}
    return {**identity, "stage": stage} if stage else identity


def _staged(encoder: Any, stage: str | None) -> tuple[Any, str | None]:
    """(what to run, the stage's canonical name): the encoder cut at `stage`, or itself."""
    if stage is None:
        return encoder, None
    from finealign.encoders.stages import StemEncoder  # encoders import data, which imports the cache

    stem = StemEncoder(encoder, stage)
    return stem, stem.stage


def _dataset_identity(name: str, dataset: Any, given: dict[str, Any]) -> dict[str, Any]:
    options = _options_of(dataset, given)
    options.pop("root", None)  # the fingerprint records the resolved files instead
    fingerprint = getattr(dataset, "fingerprint", None)
    return {"name": name, "options": options, "fingerprint": fingerprint() if fingerprint else None}


def _raw_options(options: dict[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    options.setdefault("embed_dim", 0)
    if options["embed_dim"] != 0:
        raise ConfigError("feature caches hold raw backbone features: leave embed_dim unset (0)")
    return options


def remove_stale_temporaries(cache_dir: Path, key: str) -> None:
    """Drop temporary folders of this key left by killed builds (their process is gone)."""
    for tmp in cache_dir.glob(f".{key}.tmp-*"):
        try:
            pid = int(tmp.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _write_modality(tmp: Path, prefix: str, tokens, masks, pooled) -> dict[str, int]:
    n = sum(len(t) for t in tokens)
    length = max(t.shape[1] for t in tokens)
    dim = tokens[0].shape[2]
    # tokens, mask and pooled vectors, plus a margin for the headers and meta.json
    check_disk(tmp, n * length * dim * 2 + n * length + n * dim * 2 + (1 << 20), f"the {prefix} features ({n} items)")
    out_tokens = np.lib.format.open_memmap(tmp / f"{prefix}_tokens.npy", "w+", np.float16, (n, length, dim))
    out_mask = np.lib.format.open_memmap(tmp / f"{prefix}_mask.npy", "w+", np.bool_, (n, length))
    for name in ("tokens", "mask"):  # reserve the blocks: a full disk is ENOSPC here, not SIGBUS below
        preallocate(tmp / f"{prefix}_{name}.npy")
    # A new memmap file starts zero-filled, so padding stays 0 / False without a write.
    pad_stack(tokens, length, out_tokens)
    pad_stack(masks, length, out_mask)
    out_tokens.flush()
    out_mask.flush()
    del out_tokens, out_mask
    save_array(tmp, f"{prefix}_pooled", pooled)
    return {"dim": int(dim), "num_tokens": int(length)}


def build_feature_cache(
    dataset_name: str,
    dataset_options: dict[str, Any] | None,
    split: str,
    vision_name: str,
    vision_options: dict[str, Any] | None,
    text_name: str,
    text_options: dict[str, Any] | None,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    verify: bool = False,
    vision_stage: str | None = None,
    text_stage: str | None = None,
) -> Path:
    """Encode one split once and return its cache entry folder (reused when already complete, not
    damaged and built from the same image files; `verify`: the full check of `verify_entry`, with
    checksums, before reusing — what `finealign cache` does). `vision_stage` / `text_stage` stop
    that backbone at a named stage (encoders.stages)."""
    check_positive_int("batch_size", batch_size)
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    device = torch.device(device)
    dataset_options = dict(dataset_options or {})
    dataset = create_dataset(dataset_name, **dataset_options)
    data = dataset.split(split)
    vision_encoder = create_encoder(vision_name, **_raw_options(vision_options))
    text_encoder = create_encoder(text_name, **_raw_options(text_options))
    vision, vision_stage = _staged(vision_encoder, vision_stage)
    text, text_stage = _staged(text_encoder, text_stage)
    identity: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "dataset": _dataset_identity(dataset_name, dataset, dataset_options),
        "split": split,
        "vision": _encoder_identity(vision_name, vision_encoder, vision_options or {}, vision_stage),
        "text": _encoder_identity(text_name, text_encoder, text_options or {}, text_stage),
    }
    key = cache_key(identity)
    entry = cache_dir / key
    where = f"feature cache {dataset_name}/{split}"
    if is_complete(entry):
        damaged = _reuse_problems(entry, data.items, verify)
        if not damaged:
            log.info("%s: reusing %s (%d images, %d captions)", where, entry, data.num_items, data.num_captions)
            return entry
        warnings.warn(f"feature cache {entry} is damaged or stale ({damaged[0]}); rebuilding it", RuntimeWarning,
                      stacklevel=2)  # fmt: skip
        shutil.rmtree(entry)

    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache_dir, key)
    tmp = cache_dir / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    log.info("%s: building %s — %d images with %s, then %d captions with %s, on %s", where, entry, data.num_items,
             vision_name, data.num_captions, text_name, device)  # fmt: skip
    try:
        seconds = {}
        began = start = time.perf_counter()
        v = encode_items(
            vision,
            data.num_items,
            data.raw_item,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            desc=f"{dataset_name}/{split} {vision_name}",
        )
        visual_info = _write_modality(tmp, "visual", *v)
        del v
        seconds["vision"] = time.perf_counter() - start
        log.info("%s: %d images encoded and written in %.1f s (%d tokens of d %d each)", where, data.num_items,
                 seconds["vision"], visual_info["num_tokens"], visual_info["dim"])  # fmt: skip
        start = time.perf_counter()
        t = encode_items(
            text,
            data.num_captions,
            data.captions.__getitem__,
            batch_size=batch_size,
            device=device,
            num_workers=0,
            desc=f"{dataset_name}/{split} {text_name}",
        )
        text_info = _write_modality(tmp, "text", *t)
        del t
        seconds["text"] = time.perf_counter() - start
        log.info("%s: %d captions encoded and written in %.1f s (up to %d tokens of d %d)", where, data.num_captions,
                 seconds["text"], text_info["num_tokens"], text_info["dim"])  # fmt: skip
        save_array(tmp, "caption_item", data.caption_item.numpy())
        finish_entry(tmp, {
            "key": key,
            "vision": {**identity["vision"], **visual_info},
            "text": {**identity["text"], **text_info},
            "dataset": dataset_name,
            "dataset_identity": identity["dataset"],
            "split": split,
            "num_items": data.num_items,
            "num_captions": data.num_captions,
            "items": [str(x) for x in data.items],
            RECORD: item_records(data.items),  # the image files encoded (cache.freshness)
            "seconds": seconds,
            "device": str(device),
        })  # fmt: skip
        _move_into_place(tmp, entry)
        log.info("%s: entry %s complete in %.1f s", where, key, time.perf_counter() - began)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(cache_dir, f"the feature cache entry {key}") from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


def _reuse_problems(entry: Path, items: Any, verify: bool) -> list[str]:
    """Why a complete entry cannot be reused ([] when it can): damaged (sizes, shapes, dtypes;
    with `verify` also checksums and finite tokens) or built from image files that changed since."""
    meta = read_meta(entry) or {}
    damaged = quick_problems(entry, meta)
    if not damaged and verify:
        status, problems = verify_entry(entry)
        damaged = problems if status == "damaged" else []  # "unverifiable" (written before checksums): kept
    if damaged:
        return damaged
    changed, record = changed_items(meta, items)
    if changed:
        return [f"{len(changed)} image file(s) changed since it was built, e.g. {changed[0]}"]
    if record is not None:
        write_record(entry, meta, record)
    return []


def _move_into_place(tmp: Path, entry: Path) -> None:
    if entry.exists() and not is_complete(entry):
        shutil.rmtree(entry)  # a leftover that never completed
    try:
        os.rename(tmp, entry)
    except OSError:
        if not is_complete(entry):  # someone else finished the same key first: theirs is as good
            raise
