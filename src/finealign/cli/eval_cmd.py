"""`finealign eval ckpt=PATH [key=value ...]`: evaluate a saved model on its config's eval split;
without ckpt, evaluate the composed model untrained (zero-shot: pretrained towers, any aligner).

    finealign eval ckpt=runs/toy/toy/mean_max-infonce/model.pt
    finealign eval ckpt=.../model.pt eval.split=val eval.coco_folds=5 aligner=hard
    finealign eval encoder=openclip_vit_b32 aligner=tokenflow data=flickr30k     # zero-shot, trained: false
    finealign eval -m ckpt=a/model.pt,b/model.pt aligner=hard,mean_max          # 4 evaluations, numbered dirs
    finealign eval ckpt=.../model.pt hydra.run.dir=runs/mine                    # same as --output-dir
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # omegaconf is imported where used: `finealign --help` stays quick
    from omegaconf import DictConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="ckpt=PATH (none: zero-shot), then overrides applied to the checkpoint's config",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where results go (default: a new <run dir>/eval/<timestamp>; never over earlier results)",
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_hydra_flags(parser)


def _config(ckpt: str | None, overrides: list[str]) -> tuple[DictConfig, DictConfig | None]:
    """(the config that would be evaluated: a checkpoint's own with `overrides`, or a composed one;
    Hydra's node of the composition, None for a checkpoint's)."""
    if ckpt:
        from finealign.engine.experiment import checkpoint_config

        return checkpoint_config(ckpt, overrides)[2], None
    from finealign.config import compose_with_hydra

    return compose_with_hydra("config", overrides)


def _split_ckpt(job_overrides: list[str]) -> tuple[str | None, list[str]]:
    """(ckpt=PATH or None, the other overrides)."""
    ckpts = [o.partition("=")[2] for o in job_overrides if o.startswith("ckpt=")]
    if len(ckpts) > 1 or (ckpts and not ckpts[0]):
        raise ConfigError(
            "finealign eval takes one ckpt=PATH (a model.pt or checkpoints/last.pt), or none for zero-shot"
        )
    return (ckpts[0] if ckpts else None), [o for o in job_overrides if not o.startswith("ckpt=")]


def _evaluate_one(
    job_overrides: list[str], output_dir: str | None, args: argparse.Namespace, sweep_dir: str | None = None
) -> dict:
    ckpt, overrides = _split_ckpt(job_overrides)
    if args.cfg:
        print_cfg(args.cfg, _config(ckpt, overrides)[0], dirs_node(output_dir, sweep_dir), resolve=args.resolve)
        return {}
    from finealign.engine.experiment import evaluate_checkpoint, evaluate_untrained

    if ckpt:
        return evaluate_checkpoint(ckpt, overrides, output_dir=output_dir)
    from finealign.config import compose

    extra = [f"output_dir={output_dir}"] if output_dir else []
    return evaluate_untrained(compose("config", [*overrides, *extra]), overrides=overrides)


def run(args: argparse.Namespace) -> int:
    if args.info:
        print_info("config")
        return 0
    overrides, run_dir, sweep_dir = run_dirs(list(args.overrides))
    planned = jobs(overrides, args.multirun, sweep_dir, run_dir or args.output_dir)
    if args.multirun and not args.cfg:
        cfg, hydra = _config(*_split_ckpt(planned[0][0]))
        write_multirun_record(planned, cfg, hydra, overrides, "eval")
    for job_overrides, out in planned:
        if len(planned) > 1 and not args.cfg:
            print(f"[job] {' '.join(job_overrides)}")
        metrics = _evaluate_one(job_overrides, out, args, sweep_dir)
        if args.cfg:
            continue
        if args.json:
            print(json.dumps(metrics, indent=2))
        else:
            from finealign.engine.metrics import HEADLINE

            print("  ".join(f"{k}={metrics[k]:.1f}" for k in HEADLINE))
            print(f"results: {metrics['output_dir']}/results.json")
    return 0
