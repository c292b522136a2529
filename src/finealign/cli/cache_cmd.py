"""`finealign cache [key=value ...]`: encode dataset splits once with frozen encoders.

The settings are the Hydra config configs/cache.yaml (the `cached` dataset's keys):

    finealign cache dataset=flickr8k splits=[test,train] vision=mobilenet_v2 text=minilm
    finealign cache dataset=coco dataset_options.root=/data/coco vision=timm vision_options.model_name=vit_base_patch16_224
    finealign cache -m dataset=flickr8k,flickr30k                 # one build per dataset
    finealign cache --verify [cache_dir=DIR]                      # check every entry
"""

from __future__ import annotations

import argparse
from typing import Any, cast

from finealign.cli.hydra_flags import (
    add_hydra_flags,
    dirs_node,
    jobs,
    print_cfg,
    print_info,
    run_dirs,
    write_multirun_record,
)
from finealign.errors import ConfigError

CONFIG_NAME = "cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="Hydra overrides of configs/cache.yaml (see --cfg job), e.g. splits=[test,val] "
                             "dataset_options.root=/data/flickr8k")  # fmt: skip
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every entry in the cache folder (sizes, shapes, dtypes, SHA-256, finite "
        "tokens) instead of building; exit 1 if one is damaged",
    )
    add_hydra_flags(parser)


def read_settings(overrides: list[str]):
    """(the composed cache config, Hydra's node of it, the config as CacheBuildSettings); ConfigError
    on a bad key or value."""
    from omegaconf import OmegaConf

    from finealign.cache.settings import CacheBuildSettings
    from finealign.config import compose_with_hydra
    from finealign.registry import build_config

    cfg, hydra = compose_with_hydra(CONFIG_NAME, overrides)
    return (
        cfg,
        hydra,
        build_config(
            CacheBuildSettings, cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True)), "cache config"
        ),
    )


def verify(cache_dir: Any) -> int:
    from pathlib import Path

    from finealign.cache import default_cache_dir
    from finealign.formats.feature_cache import META_FILE, verify_entry

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if not root.exists():
        link = f" (a symlink to {root.readlink()}, which does not exist)" if root.is_symlink() else ""
        raise ConfigError(f"cache_dir {root} does not exist{link}: nothing to verify; set cache_dir=DIR")
    if not root.is_dir():
        raise ConfigError(f"cache_dir {root} is a file, not a feature cache folder; set cache_dir=DIR")
    if (root / META_FILE).exists():  # one entry given as the folder: verify it
        entries = [root]
    else:
        entries = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not entries:
        print(f"no cache entries in {root}")
        return 0
    damaged = 0
    for entry in entries:
        status, problems = verify_entry(entry)
        damaged += status == "damaged"
        print(f"{status:12s} {entry}" + "".join(f"\n             {p}" for p in problems))
    return 1 if damaged else 0


def build(settings) -> dict[str, str]:
    from finealign.cache import read_meta

    entries = {}
    for split in settings.splits:
        # verify: a damaged entry (changed bytes) is rebuilt, not reused
        entry = settings.entry(split, num_workers=settings.num_workers, verify=True)
        meta = read_meta(entry) or {}
        print(
            f"{settings.dataset}/{split}: {meta.get('num_items')} items, {meta.get('num_captions')} captions -> {entry}"
        )
        entries[split] = str(entry)
    return entries


def run(args: argparse.Namespace) -> int:

    if args.info:
        print_info(CONFIG_NAME)
        return 0
    overrides, run_dir, sweep_dir = run_dirs(list(args.overrides))
    if run_dir:
        raise ConfigError("finealign cache writes entries to cache_dir (content-addressed), not to hydra.run.dir")
    planned = jobs(overrides, args.multirun, sweep_dir)
    for number, (job_overrides, _) in enumerate(planned):
        cfg, hydra, settings = read_settings(job_overrides)
        if args.cfg:
            print_cfg(args.cfg, cfg, dirs_node(None, sweep_dir), resolve=args.resolve)
            continue
        if args.verify:
            return verify(settings.cache_dir)
        if args.multirun and number == 0:  # the jobs write cache entries; the sweep dir holds the record
            write_multirun_record(planned, cfg, hydra, overrides, "cache")
        if len(planned) > 1:
            print(f"[job] {' '.join(job_overrides)}")
        entries = build(settings)
        # The `features` dataset reads these entries: one absolute directory per split.
        print("use with: data=features " + " ".join(f"data.splits.{k}={v}" for k, v in entries.items()))
    return 0
