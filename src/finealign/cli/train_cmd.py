"""`finealign train [key=value ...]`: compose the Hydra config, train, evaluate, save results.

finealign train aligner=hard loss=triplet data=flickr30k encoder=vit_b16_bert train.epochs=20
finealign train --cfg job data=toy               # print the composed config and stop
finealign train -m aligner=global,mean_max seed=0,1    # 4 jobs in multirun/<date>/<time>/0..3
finealign train hydra.run.dir=runs/mine          # where this run writes
finealign train --config-dir ~/my_configs aligner=my   # ~/my_configs/aligner/my.yaml joins the search path
torchrun --nproc_per_node 4 -m finealign train ...  # DDP over 4 processes (train.batch_size is global)
"""

from __future__ import annotations

import argparse
import json
import os

from finealign.cli.hydra_flags import (
    add_hydra_flags,
    dirs_node,
    jobs,
    print_cfg,
    print_info,
    run_dirs,
    with_config_dirs,
    write_multirun_record,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Hydra overrides: group choices (aligner=hard) or values (train.lr=1e-4)",
    )
    parser.add_argument("--config-name", default="config", help="top-level config file (default: config)")
    parser.add_argument("--print-config", action="store_true", help="same as --cfg job --resolve")
    parser.add_argument("--json", action="store_true", help="print the result dict as JSON")
    add_hydra_flags(parser)


def run(args: argparse.Namespace) -> int:
    from omegaconf import open_dict

    from finealign.config import compose_with_hydra, validate

    given = with_config_dirs(list(args.overrides), args.config_dir)
    if args.info:
        print_info(args.config_name, given)
        return 0
    overrides, run_dir, sweep_dir = run_dirs(given)
    planned = jobs(overrides, args.multirun, sweep_dir, run_dir)
    show = "job" if args.print_config else args.cfg
    for number, (job_overrides, out) in enumerate(planned):
        cfg, hydra = compose_with_hydra(args.config_name, [*job_overrides, *([f"output_dir={out}"] if out else [])])
        if show:
            with open_dict(hydra):  # Hydra's own node, with finealign's run and sweep dirs
                hydra.merge_with(dirs_node(cfg.output_dir, sweep_dir))
            print_cfg(show, cfg, hydra, resolve=args.resolve or args.print_config)
            validate(cfg)
            continue
        from finealign.engine.experiment import run_experiment

        if args.multirun and number == 0 and int(os.environ.get("RANK", "0") or 0) == 0:
            write_multirun_record(planned, cfg, hydra, overrides, "train")
        if len(planned) > 1:
            print(f"[job] {' '.join(job_overrides)}")
        result = run_experiment(cfg, overrides=job_overrides, hydra=hydra)
        if int(os.environ.get("RANK", "0") or 0) > 0:
            continue  # torchrun: every rank returns the same result; rank 0 prints it
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            from finealign.engine.metrics import HEADLINE

            print("  ".join(f"{k}={result[k]:.1f}" for k in HEADLINE))
            print(f"results: {cfg.output_dir}/results.json")  # the directory run_experiment claimed
    return 0
