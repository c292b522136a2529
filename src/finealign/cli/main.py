"""`finealign` command line. Each subcommand is one module in this package with
`add_arguments(parser)` and `run(args) -> int`; register it in COMMANDS."""

from __future__ import annotations

import argparse
import importlib
import sys

from finealign.errors import FinealignError

# subcommand → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("finealign.cli.list_cmd", "list registered aligners, losses, encoders, datasets"),
    "profile": ("finealign.cli.profile_cmd", "profile aligners: latency, memory, FLOPs, traces, scaling"),
    "train": ("finealign.cli.train_cmd", "train and evaluate one experiment (Hydra overrides: aligner=hard ...)"),
    "eval": ("finealign.cli.eval_cmd", "evaluate a saved model: finealign eval ckpt=PATH [overrides]"),
    "sweep": ("finealign.cli.sweep_cmd", "run or join an Optuna sweep over aligners, losses, encoders"),
    "bench": ("finealign.cli.bench_cmd", "the citable protocol: equal tuning budget, paired seeds, bootstrap CIs"),
    "report": ("finealign.cli.report_cmd", "rebuild a sweep's or a protocol's tables and plot from storage"),
    "download": ("finealign.cli.download_cmd", "download a dataset's public files; say where the rest goes"),
    "cache": ("finealign.cli.cache_cmd", "encode a dataset split once with frozen encoders into a feature cache"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finealign",
        description="Benchmark and ablate fine-grained cross-modal alignment for retrieval.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except FinealignError as exc:
        # Our own errors already name the problem: print them without a traceback.
        print(f"finealign {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
