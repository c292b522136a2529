"""`finealign eval ckpt=PATH [key=value ...]`: evaluate a saved model on its config's eval split;
without ckpt, evaluate the composed model untrained (zero-shot: pretrained towers, any aligner).

    finealign eval ckpt=runs/toy/toy/mean_max-infonce/model.pt
    finealign eval ckpt=.../model.pt eval.split=val eval.coco_folds=5 aligner=hard
    finealign eval encoder=openclip_vit_b32 aligner=tokenflow data=flickr30k     # zero-shot, trained: false
"""

from __future__ import annotations

import argparse
import json

from finealign.errors import ConfigError

HEADLINE = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="ckpt=PATH (required), then overrides applied to the checkpoint's config")
    parser.add_argument("--output-dir", default=None,
                        help="where results go (default: a new <run dir>/eval/<timestamp>; never over earlier results)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--cfg", "-c", choices=("job",), default=None,
                        help="print the config that would be evaluated (a checkpoint's own, with your overrides) and exit")


def run(args: argparse.Namespace) -> int:
    ckpts = [o.partition("=")[2] for o in args.overrides if o.startswith("ckpt=")]
    if len(ckpts) > 1 or (ckpts and not ckpts[0]):
        raise ConfigError("finealign eval takes one ckpt=PATH (a model.pt or checkpoints/last.pt), or none for zero-shot")
    overrides = [o for o in args.overrides if not o.startswith("ckpt=")]
    from finealign.engine.experiment import evaluate_checkpoint, evaluate_untrained

    if args.cfg:
        from omegaconf import OmegaConf

        if ckpts:
            from finealign.engine.checkpoint import load_checkpoint
            from finealign.engine.experiment import apply_overrides

            state = load_checkpoint(ckpts[0])
            snapshot = state["config"] if "data_meta" not in state else state
            cfg = apply_overrides(OmegaConf.create(snapshot["config"]), overrides)
        else:
            from finealign.config import compose

            cfg = compose("config", overrides)
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    if ckpts:
        metrics = evaluate_checkpoint(ckpts[0], overrides, output_dir=args.output_dir)
    else:
        from finealign.config import compose

        extra = [f"output_dir={args.output_dir}"] if args.output_dir else []
        metrics = evaluate_untrained(compose("config", [*overrides, *extra]), overrides=overrides)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print("  ".join(f"{k}={metrics[k]:.1f}" for k in HEADLINE))
        print(f"results: {metrics['output_dir']}/results.json")
    return 0
