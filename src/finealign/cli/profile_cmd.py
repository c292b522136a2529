"""`finealign profile [key=value ...]`: latency, memory, FLOPs, traces and scaling of aligners.

The settings are the Hydra config configs/profile.yaml (flat keys, each checked by its dataclass);
every aligner's own options are composed in under its name, so overrides read as everywhere else:

    finealign profile aligners=all device=cpu nv=16 nt=80 lv=50 lt=32 dim=256 repeats=10
    finealign profile aligners=[hard,mean_max] device=cuda dtype=bf16 scaling=[n,tokens]
    finealign profile aligners=mean_max mean_max.direction=both eval_results=runs/eval/results.csv
    finealign profile -m dtype=fp32,bf16 aligners=mean_max       # one run per dtype
    finealign profile --cfg job nv=100                           # print the composed config
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

CONFIG_NAME = "profile"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="Hydra overrides of configs/profile.yaml (see --cfg job), e.g. nv=100 "
                             "aligners=[hard,mean_max] mean_max.direction=both")  # fmt: skip
    add_hydra_flags(parser)


def aligner_node_overrides() -> tuple[list[str], set[str]]:
    """Hydra overrides that compose every aligner config file (finealign's and plugins') into the
    profile config under its own name, and those names."""
    from finealign.config import group_options

    names = sorted(group_options("aligner"))
    return [f"+aligner@{name}={name}" for name in names], set(names)


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from finealign.config import compose_with_hydra
    from finealign.profiling.pipeline import render, run_profile
    from finealign.profiling.run_config import read_profile_config

    if args.info:
        print_info(CONFIG_NAME)
        return 0
    overrides, run_dir, sweep_dir = run_dirs(list(args.overrides))
    if any(o.partition("=")[0].lstrip("+~") == "aligner" for o in overrides):
        raise ConfigError("profile picks aligners with aligners=NAME or aligners=[A,B] (plural: `aligner` is "
                          "the group of aligner configs, composed in under each name)")  # fmt: skip
    planned = jobs(overrides, args.multirun, sweep_dir, run_dir)
    nodes, node_names = aligner_node_overrides()
    failed = False
    for number, (job_overrides, out_dir) in enumerate(planned):
        cfg, hydra = compose_with_hydra(CONFIG_NAME, [*nodes, *job_overrides])
        container = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=False))  # a DictConfig gives a dict
        for name in node_names & set(container):
            # `dim: ${encoder.embed_dim}` refers to the training config; the profile's `dim` applies
            container[name] = {k: v for k, v in container[name].items() if not OmegaConf.is_interpolation(cfg[name], k)}
        profile = read_profile_config(container, node_names)
        if args.cfg:
            print_cfg(args.cfg, cfg, dirs_node(out_dir, sweep_dir), resolve=args.resolve)
            continue
        if args.multirun and number == 0:
            write_multirun_record(planned, cfg, hydra, overrides, "profile")
        if len(planned) > 1:
            print(f"[job] {' '.join(job_overrides)}")
        result = run_profile(
            profile.names, profile.shape, profile.settings,
            out_root=profile.run.out, out_dir=out_dir,
            scaling_axes=profile.run.axes(), scaling_values=profile.run.values(),
            trace=profile.run.trace, eval_results=profile.run.eval_results, progress=profile.run.progress,
        )  # fmt: skip
        print(render(result))
        failed |= any(r.get("error") for r in result.rows)
    return 1 if failed else 0
