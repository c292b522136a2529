"""`finealign` command line. Each subcommand is one module in this package with
`add_arguments(parser)` and `run(args) -> int`; register it in COMMANDS."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import traceback

from finealign.errors import DiskFullError, DivergenceError, FinealignError, ResourceError

# subcommand → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("finealign.cli.list_cmd", "list registered aligners, losses, encoders, datasets"),
    "profile": ("finealign.cli.profile_cmd", "profile aligners: latency, memory, FLOPs, traces, scaling"),
    "train": ("finealign.cli.train_cmd", "train and evaluate one experiment (Hydra overrides: aligner=hard ...)"),
    "eval": ("finealign.cli.eval_cmd", "evaluate a saved model: finealign eval ckpt=PATH [overrides]"),
    "sweep": ("finealign.cli.sweep_cmd", "run or join an Optuna sweep over aligners, losses, encoders"),
    "bench": ("finealign.cli.bench_cmd", "the citable protocol: equal tuning budget, paired seeds, bootstrap CIs"),
    "explain": ("finealign.cli.explain_cmd", "picture which word goes to which region, per aligner, for a test pair"),
    "report": ("finealign.cli.report_cmd", "rebuild a sweep's or a protocol's tables and plot from storage"),
    "download": ("finealign.cli.download_cmd", "download a dataset's public files; say where the rest goes"),
    "cache": ("finealign.cli.cache_cmd", "encode a dataset split once with frozen encoders into a feature cache"),
    "search": ("finealign.cli.search_cmd", "build a stored gallery (FAISS index + token memory map) and query it"),
}


# Exit codes of a failure the code can name (one line on stderr, no traceback; --debug shows it).
EXIT_CONFIG = 2  # a finealign error: config, data, shapes, names (the message says what to change)
EXIT_DIVERGED = 3  # training diverged (DivergenceError / FloatingPointError from a divergence check)
EXIT_RESOURCES = 4  # not enough memory or disk, or an OS error on a path the user gave
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it)


def failure(command: str, exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for an error whose cause the code can name, else None (a bug:
    its traceback is the useful report)."""
    from finealign.kept import kept

    where = f"finealign {command}"
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, f"{where}: stopped; kept: {', '.join(kept()) or 'nothing finished yet'}"
    if isinstance(exc, (DivergenceError, FloatingPointError)):
        return EXIT_DIVERGED, f"{where}: diverged: {exc}"
    if isinstance(exc, (ResourceError, DiskFullError)):
        return EXIT_RESOURCES, f"{where}: error: {exc}"
    if isinstance(exc, FinealignError):
        return EXIT_CONFIG, f"{where}: error: {exc}"
    if isinstance(exc, MemoryError):
        return EXIT_RESOURCES, f"{where}: error: out of memory ({exc or 'an allocation failed'})"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return EXIT_RESOURCES, f"{where}: error: the disk is full ({exc})"
    if isinstance(exc, OSError) and exc.filename is not None:
        target = exc.filename if exc.filename2 is None else f"{exc.filename} → {exc.filename2}"
        return EXIT_RESOURCES, f"{where}: error: {target}: {exc.strerror or exc}"
    return None


def version_line() -> str:
    """`finealign 0.1.0 (git 1a2b3c4d, dirty)` — the commit only when run from a checkout."""
    from finealign import __version__
    from finealign.engine.provenance import git_state

    git = git_state()
    where = f" (git {git['git_commit'][:12]}{', dirty' if git['git_dirty'] else ''})" if git else ""
    return f"finealign {__version__}{where}"


class _Version(argparse.Action):
    """--version, with the line computed only when asked (the git lookup imports the engine)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def setup_logging() -> None:
    """Library code logs through `logging`; the command line shows INFO and above on stderr
    (FINEALIGN_LOG_LEVEL=DEBUG|INFO|WARNING changes it). A host app's own config is left alone."""
    root = logging.getLogger()
    if not root.handlers:
        level = os.environ.get("FINEALIGN_LOG_LEVEL", "INFO").upper()
        if int(os.environ.get("RANK", "0") or 0) > 0:  # torchrun: rank 0 tells the story, the others warn
            level = "WARNING"
        logging.basicConfig(level=level if isinstance(logging.getLevelName(level), int) else "INFO",
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")  # fmt: skip
    # Libraries that log their own start-up at INFO (faiss names the SIMD build it tried and failed
    # to load before the one it loads): keep our INFO lines readable.
    for noisy in ("faiss.loader",):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finealign",
        description="Benchmark and ablate fine-grained cross-modal alignment for retrieval.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version (and git commit) and exit")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (after any command)")
    parser.add_argument(
        "--shell-completion",
        "-sc",
        metavar="install=bash",
        help='print the completion script: eval "$(finealign -sc install=bash)"',
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # also accepted after the command; SUPPRESS keeps `finealign --debug CMD` working
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        importlib.import_module(module).add_arguments(p)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; KEY=VALUE overrides may also come after a flag, as Hydra accepts them
    (`finealign train aligner=my --config-dir DIR seed=1`), which argparse alone refuses."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if not hasattr(args, "overrides") or any(u.startswith("-") or "=" not in u for u in unknown):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = [*args.overrides, *unknown]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["__complete"]:  # called by the shell completion script
        from finealign.cli.completion import candidates

        print("\n".join(candidates(argv[1:], parser)))
        return 0
    if argv[:1] in (["--shell-completion"], ["-sc"]):
        from finealign.cli.completion import install_script

        shell = argv[1].removeprefix("install=") if len(argv) > 1 else "bash"
        try:
            print(install_script(shell), end="")
        except FinealignError as exc:
            print(f"finealign: error: {exc}", file=sys.stderr)
            return 2
        return 0
    args = parse(parser, argv)
    setup_logging()
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from finealign.kept import forget

    forget()
    try:
        if getattr(args, "config_dir", None) and hasattr(args, "overrides"):
            from finealign.cli.hydra_flags import with_config_dirs

            args.overrides, args.config_dir = with_config_dirs(list(args.overrides), args.config_dir), None
        return int(importlib.import_module(args._module).run(args) or 0)
    except (Exception, KeyboardInterrupt) as exc:
        named = failure(args.command, exc)
        if named is None:
            raise  # not a cause the code can name: the traceback is the report
        if args.debug or os.environ.get("FINEALIGN_DEBUG") == "1":
            traceback.print_exc()
        print(named[1], file=sys.stderr)
        return named[0]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
