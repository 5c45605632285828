"""The `ptransfer` command.

Each subcommand lives beside the code it drives and registers itself through
an `add_cli(subparsers)` function in a light module (no jax / tensorflow
import at module level, so `ptransfer --help` is instant). The parser's
`func` default receives the parsed args. A `PtransferError` is printed as one
line, without a traceback, and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ptransfer.core.errors import PtransferError

# Modules that register subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "ptransfer.cli.assets",
    "ptransfer.cli.tasks",
    "ptransfer.cli.train",
    "ptransfer.cli.transfer",
    "ptransfer.cli.indicators",
    "ptransfer.cli.report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptransfer",
        description="Soft prompt tuning and prompt transfer on frozen JAX/Flax models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(sub)
    return parser


class _QuietLibraries(logging.Filter):
    """Drops library chatter that says nothing to a user: gin's include-path
    probing ("Path not found" for each search path it tries) and orbax's
    per-save INFO lines. Warnings and errors of other libraries pass."""

    GIN_PROBES = ("Path not found:", "system_path_file_exists:")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.name == "root" and msg.startswith(self.GIN_PROBES):
            return False
        return not (record.name == "absl" and record.levelno < logging.WARNING)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietLibraries())
        for noisy in ("jax._src.xla_bridge", "jax._src.dispatch"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        result = args.func(args)
    except PtransferError as e:
        print(f"ptransfer: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
