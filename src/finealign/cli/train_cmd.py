"""`finealign train [key=value ...]`: compose the Hydra config, train, evaluate, save results.

    finealign train aligner=hard loss=triplet data=flickr30k encoder=vit_b16_bert train.epochs=20
    finealign train --print-config data=toy     # show the composed config and stop
"""

from __future__ import annotations

import argparse
import json

from omegaconf import OmegaConf

from finealign.config import compose, validate

HEADLINE = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="Hydra overrides: group choices (aligner=hard) or values (train.lr=1e-4)")
    parser.add_argument("--config-name", default="config", help="top-level config file (default: config)")
    parser.add_argument("--print-config", action="store_true", help="print the composed config, validate it, and exit")
    parser.add_argument("--json", action="store_true", help="print the result dict as JSON")


def run(args: argparse.Namespace) -> int:
    cfg = compose(args.config_name, args.overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        validate(cfg)
        return 0
    from finealign.engine.experiment import run_experiment

    result = run_experiment(cfg, overrides=args.overrides)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("  ".join(f"{k}={result[k]:.1f}" for k in HEADLINE))
        print(f"results: {cfg.output_dir}/results.json")  # the directory run_experiment claimed
    return 0
