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
import re
import sys

from ptransfer.core.errors import PtransferError

# Commands whose work reads data through TensorFlow: it is imported first, quietly.
TENSORFLOW_COMMANDS = ("train", "eval", "transfer", "project", "indicators", "demo")

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
    accept_both_spellings(parser)
    use_help_formatters(parser)
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


# gin appends "In call to configurable 'X' (<function X at 0x...>)" to errors raised
# inside a configurable: noise to a user, who already reads which setting is wrong.
_GIN_CALL_SUFFIX = re.compile(r"\s*In call to configurable '[^']*' \(<[^>]*>\)")


def error_text(error: Exception) -> str:
    """The one line a PtransferError prints as, without gin's call suffixes."""
    return " ".join(_GIN_CALL_SUFFIX.sub("", str(error)).split())


def _parsers(parser: argparse.ArgumentParser):
    """`parser` and every (sub)subcommand parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                yield from _parsers(sub)


def accept_both_spellings(parser: argparse.ArgumentParser) -> None:
    """Lets every --option of `parser` and its subcommands be given as `--data_dir`
    or `--data-dir`; help and usage show the underscore spelling (T5X spells flags
    so), however the option was declared. argparse has no public alias API, so the
    other spelling is added to each parser's option table."""
    for p in _parsers(parser):
        for action in list(p._actions):
            names = []
            for name in action.option_strings:
                if name.startswith("--") and not name.startswith("--gin"):
                    for other in ("--" + name[2:].replace("-", "_"),
                                  "--" + name[2:].replace("_", "-")):
                        p._option_string_actions.setdefault(other, action)
                    name = "--" + name[2:].replace("-", "_")
                if name not in names:
                    names.append(name)
            action.option_strings = names


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help only where it says something: not
    for required options, flags, a None default, or help that states its own default
    (such as "(default: all)")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required or action.nargs == 0 or action.default is None or \
                "default" in text:
            return text
        return super()._get_help_string(action)


def use_help_formatters(parser: argparse.ArgumentParser) -> None:
    """Every parser under `parser` shows defaults as DefaultsHelpFormatter does (one
    rule for all subcommands, whatever formatter they declared), options without help
    too."""
    for p in _parsers(parser):
        p.formatter_class = DefaultsHelpFormatter
        for action in p._actions:
            if action.help is None and action.option_strings and not action.required and \
                    action.nargs != 0 and action.default not in (None, argparse.SUPPRESS):
                action.help = "(default: %(default)s)"  # argparse prints no line without help


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    if args.command in TENSORFLOW_COMMANDS:
        from ptransfer.cli import quiet

        quiet.import_tensorflow_quietly()
    try:
        result = args.func(args)
    except PtransferError as e:
        print(f"ptransfer: error: {error_text(e)}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
