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

from ptransfer.errors import PtransferError

# Modules that register subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "ptransfer.assets",
    "tasks.cli",
    "ptransfer.training.cli",
    "ptransfer.transfer.cli",
    "ptransfer.indicators.cli",
    "ptransfer.report.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptransfer",
        description="Soft prompt tuning and prompt transfer on frozen JAX/Flax models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a part not installed in this build
                continue
            raise
        module.add_cli(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
