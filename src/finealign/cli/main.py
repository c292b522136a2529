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
