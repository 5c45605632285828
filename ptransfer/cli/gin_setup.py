"""Gin on the command line, T5X style: `--gin_file=…` (repeatable) and `--gin.NAME=VALUE`.

T5X's spellings are accepted too: `--gin_bindings=…`, comma-separated
`--gin_search_paths=a,b`, `--tfds_data_dir=DIR` (= `--gin.DATA_DIR=DIR`) and
absl's `--alsologtostderr` / `--logtostderr` (logs always go to stderr).

`--gin_file` names are looked up in, in order: the current directory, each
`--gin_search_path`, each entry of `$PTRANSFER_GIN_PATH` (os.pathsep-separated),
and the `gin_configs/`
directory that ships with ptransfer (the repository's top-level
`gin_configs/` in a checkout; the copy a built wheel carries as package data,
`ptransfer/gin_configs/`, found with importlib.resources, when installed). `include`
statements inside gin files use the same search path.

`--gin.NAME=VALUE` becomes the binding `NAME = VALUE`. VALUE is a gin literal
(`--gin.TASK="'mr'"`, `--gin.BATCH_SIZE=8`, `--gin.INIT_FROM=None`); a bare
word that is not a number, bool, None or a reference (`--gin.TASK=mr`,
`--gin.MODEL_DIR=./rel`) is taken as a string, so shell quoting is optional.

All gin is parsed and checked before anything is loaded or compiled:
an unknown configurable or parameter, a macro override nobody reads, a macro
used but never set, and a missing required macro each stop with one message.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

from ptransfer.core.errors import ConfigError, close_matches_hint

_GIN_FLAG = re.compile(r"^--gin\.(?P<name>[^=]+)=(?P<value>.*)$", re.S)
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_MACRO_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_LITERAL_START = tuple("'\"[({@%")

# gin's public API can only append include-search paths; remember what was added.
_INCLUDE_PATHS_ADDED: set[str] = set()

# Modules holding the configurables that gin files may bind; imported before parsing.
CONFIGURABLE_MODULES = (
    "ptransfer.training.optimizer",
    "ptransfer.training.trainer",
    "ptransfer.training.evaluation",
    "ptransfer.prompts",
    "ptransfer.projector.training",
    "ptransfer.experiments.demo",
    "tasks.external",
)


def packaged_gin_configs() -> str | None:
    """The `gin_configs/` directory that ships with ptransfer, or None.

    A checkout (editable install) has it at the repository's top level; a built
    wheel carries a copy as package data, `ptransfer/gin_configs/`.
    """
    repo = Path(__file__).resolve().parents[2] / "gin_configs"
    if repo.is_dir():
        return str(repo)
    shipped = importlib.resources.files("ptransfer") / "gin_configs"
    if shipped.is_dir():
        # an installed (unzipped) wheel: the Traversable is a real directory.
        return str(shipped)
    return None


_MACRO_LINE = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)\s*=\s*(?P<value>.*?)\s*(\s#.*)?$")


def shipped_macro_values(name: str) -> dict[str, str]:
    """{macro: its value as written} of the top-level macro lines of a gin file that
    ships with ptransfer (e.g. runs/prompt_tune.gin), read as text (gin is not
    imported); {} when the file is not there."""
    root = packaged_gin_configs()
    path = os.path.join(root, name) if root else None
    if not path or not os.path.isfile(path):
        return {}
    out = {}
    with open(path) as f:
        for line in f:
            m = _MACRO_LINE.match(line.rstrip("\n"))
            if m:
                out[m["name"]] = m["value"]
    return out


def required_macros_help(required: Sequence[str], run_file: str) -> str:
    """The 'Required gin macros' sentence of a command's help: the macros of
    `required` that `run_file` leaves %gin.REQUIRED (or does not set), and apart
    from them those it gives a default."""
    values = shipped_macro_values(run_file)
    defaults = {m: values[m] for m in required if m in values and values[m] != "%gin.REQUIRED"}
    needed = [m + (" (from a models/*.gin file)" if m == "BACKBONE" else "")
              for m in required if m not in defaults]
    text = "Required gin macros: " + ", ".join(needed) + "."
    if defaults:
        text += (f" {run_file} also sets " + ", ".join(f"{m} = {v}" for m, v in defaults.items())
                 + " (override with --gin.NAME=VALUE; --print_config shows every value).")
    return text


def gin_search_paths(extra: Sequence[str] = ()) -> list[str]:
    """Directories searched for `--gin_file` and `include` names, in order: the
    current directory, `extra` (--gin_search_path(s)), $PTRANSFER_GIN_PATH, and
    ptransfer's own gin_configs/."""
    paths = [os.getcwd(), *extra]
    paths += [p for p in os.environ.get("PTRANSFER_GIN_PATH", "").split(os.pathsep) if p]
    packaged = packaged_gin_configs()
    if packaged:
        paths.append(packaged)
    return paths


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """`--gin.NAME=VALUE` -> `--gin_binding`, `NAME=VALUE` (argparse cannot declare a flag family)."""
    out = []
    for arg in argv:
        m = _GIN_FLAG.match(arg)
        if m:
            out += ["--gin_binding", f"{m['name']}={m['value']}"]
        else:
            out.append(arg)
    return out


class _GinArgumentParser(argparse.ArgumentParser):
    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else args
        return super().parse_known_args(rewrite_gin_args(args), namespace)


class _ExtendSplitByComma(argparse.Action):
    """`--gin_search_paths=a,b` (T5X's spelling) extends the `--gin_search_path` list."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest) or [])
        items += [p for p in values.split(",") if p]
        setattr(namespace, self.dest, items)


class _TfdsDataDir(argparse.Action):
    """`--tfds_data_dir=DIR` (T5X's flag) is the binding `DATA_DIR = 'DIR'`."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest) or [])
        items.append(f"DATA_DIR = {values!r}")
        setattr(namespace, self.dest, items)


def add_gin_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the gin flags to a (sub)parser, in ptransfer's and T5X's spellings:
    `--gin_file`, `--gin_binding`/`--gin_bindings`, the `--gin.NAME=VALUE`
    family, `--gin_search_path` (repeatable) / `--gin_search_paths` (comma-
    separated), `--tfds_data_dir` (sets DATA_DIR), and absl's
    `--alsologtostderr`/`--logtostderr` (accepted; logs always go to stderr)."""
    parser.__class__ = type("GinArgumentParser", (_GinArgumentParser, type(parser)), {})
    parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                        help="gin file (repeatable), looked up in the gin search path "
                             "(cwd, $PTRANSFER_GIN_PATH, ptransfer's gin_configs/)")
    parser.add_argument("--gin_binding", "--gin_bindings", "--gin", action="append", default=[],
                        metavar="BINDING", dest="gin_binding",
                        help="a gin binding, e.g. \"TASK = 'mr'\"; --gin.TASK=mr is the short form")
    parser.add_argument("--gin_search_path", action="append", default=[], metavar="DIR",
                        help="extra directory searched for gin files (before the defaults)")
    parser.add_argument("--gin_search_paths", action=_ExtendSplitByComma, dest="gin_search_path",
                        metavar="DIR,DIR", help="comma-separated extra gin directories (T5X's flag)")
    parser.add_argument("--tfds_data_dir", action=_TfdsDataDir, dest="gin_binding", metavar="DIR",
                        help="TFDS data directory; the same as --gin.DATA_DIR=DIR")
    for flag in ("--alsologtostderr", "--logtostderr"):
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)


def _is_number(text: str) -> bool:
    return _NUMBER.match(text) is not None


def _as_binding(raw: str) -> str:
    """'TASK=mr' -> "TASK = 'mr'"; a binding already in gin syntax passes through.

    VALUE is kept as a gin literal when it is quoted, a container, a reference
    (@x, %X), a number, True/False/None; anything else (`./rel`, `gs://b/x`,
    `mr`) is taken as a string."""
    name, sep, value = raw.partition("=")
    name, value = name.strip(), value.strip()
    if name == "import":  # --gin.import=MODULE: gin's `import MODULE` (e.g. seqio task registrations)
        if not value:
            raise ConfigError("--gin.import needs a module, e.g. --gin.import=my_project.tasks.")
        return f"import {value.strip(chr(39) + chr(34))}"
    if not sep or not name:
        raise ConfigError(f"gin binding {raw!r} has no value; write --gin.NAME=VALUE, "
                          "e.g. --gin.TASK=mr or --gin.BATCH_SIZE=8.")
    literal = value.startswith(_LITERAL_START) or _is_number(value) or value in ("True", "False", "None")
    if value and not literal:
        value = repr(value)
    return f"{name} = {value}"


def _resolve_file(name: str, search: Sequence[str]) -> str:
    if os.path.isabs(name):
        if os.path.isfile(name):
            return name
    else:
        for d in search:
            cand = os.path.join(d, name)
            if os.path.isfile(cand):
                return cand
    raise ConfigError(f"gin file {name!r} not found; searched: {', '.join(search)}. "
                      "Use a path relative to one of these (e.g. models/t5_tiny.gin) or add "
                      "--gin_search_path DIR.")


def _macro_refs(value, out: set) -> None:
    from gin import config as gc

    if isinstance(value, gc.ConfigurableReference):
        name, selector = value.config_key
        if selector == "gin.macro":
            out.add(name)
    elif isinstance(value, dict):
        for v in value.values():
            _macro_refs(v, out)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            _macro_refs(v, out)


def macro_table() -> tuple[dict, set]:
    """({defined macro: value}, {macros referenced anywhere}) of the current gin config."""
    from gin import config as gc

    defined, referenced = {}, set()
    # gin has no public view of all bindings (config_str() is text, get_bindings
    # needs the configurable), so this one read of gin's table stays private.
    for (scope, selector), params in gc._CONFIG.items():
        if selector == "gin.macro":
            defined[scope] = params.get("value")
        for v in params.values():
            _macro_refs(v, referenced)
    return defined, referenced


def _is_required_placeholder(value) -> bool:
    from gin import config as gc

    return isinstance(value, gc.ConfigurableReference) and value.config_key == ("gin.REQUIRED", "gin.constant")


def _registered_names() -> set[str]:
    """Names of gin's registered configurables, for a close-match hint only: gin has no
    public listing, so its registry is read when present and the hint is left out when
    a gin release changes it."""
    from gin import config as gc

    try:
        return {sel.split(".")[-1] for sel, _ in getattr(gc, "_REGISTRY").items()}
    except Exception:  # noqa: BLE001 (any change of gin's internals: no hint, same error)
        return set()


def _gin_error(e: Exception, where: str) -> ConfigError:
    msg = str(e).strip().replace("\n", " ")
    msg = re.sub(r"\s+", " ", msg)
    hint = ""
    m = re.search(r"No configurable matching '([^']+)'", msg)
    if m:
        hint = close_matches_hint(m.group(1).split(".")[-1], _registered_names())
    return ConfigError(f"gin {where}: {msg}.{hint}")


def parse_gin(gin_files: Iterable[str], bindings: Iterable[str], *,
              required: Sequence[str] = (), search_paths: Sequence[str] = ()) -> None:
    """Clears gin, then parses files and bindings and checks every macro.

    Raises ConfigError (before anything heavy runs) for: a file not found, a
    syntax error, an unknown configurable or parameter, a `--gin.NAME` macro
    override that no file reads, a macro used but never set, and a macro in
    `required` that is unset or still `%gin.REQUIRED`.
    """
    import gin

    for mod in CONFIGURABLE_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise

    gin.clear_config(clear_constants=False)
    search = gin_search_paths(search_paths)
    for d in search[1:]:  # for `include` (gin already searches the cwd first)
        if d not in _INCLUDE_PATHS_ADDED:
            gin.add_config_file_search_path(d)
            _INCLUDE_PATHS_ADDED.add(d)
    files = [_resolve_file(f, search) for f in gin_files]
    for f in files:
        try:
            gin.parse_config_file(f)
        except (ValueError, SyntaxError, IOError, KeyError, TypeError) as e:
            raise _gin_error(e, f"file {f}") from None

    defined, referenced = macro_table()
    known_macros = set(defined) | referenced | set(required)
    parsed = [_as_binding(b) for b in bindings]
    for b in parsed:
        name = b.split("=", 1)[0].strip()
        if _MACRO_NAME.match(name) and name not in known_macros:
            raise ConfigError(f"--gin.{name}: no gin file uses the macro {name!r}, so setting it "
                              f"would do nothing." + close_matches_hint(name, known_macros))
        try:
            gin.parse_config(b)
        except ImportError as e:
            raise ConfigError(f"--gin.{b.replace(' ', '=', 1)}: cannot import module {e.name!r} "
                              f"({e}); put it on PYTHONPATH or install it.") from None
        except (ValueError, SyntaxError, KeyError, TypeError) as e:
            raise _gin_error(e, f"binding {b!r}") from None

    defined, referenced = macro_table()
    missing = [m for m in required if m not in defined or _is_required_placeholder(defined[m])]
    if missing:
        raise ConfigError(
            "required gin macro(s) not set: " + ", ".join(missing) + ". Set them in a gin file or "
            "on the command line, e.g. " + " ".join(f"--gin.{m}=..." for m in missing) +
            " (BACKBONE comes from a models/*.gin file, INIT_FROM from a prompts/*.gin file).")
    unset = sorted(m for m in referenced if m not in defined)
    if unset:
        raise ConfigError(f"gin macro(s) used but never set: {', '.join(unset)}; set them with "
                          + " ".join(f"--gin.{m}=..." for m in unset) + ".")


def macro_value(name: str):
    """The evaluated value of a gin macro (after `parse_gin`)."""
    import gin

    value = gin.query_parameter(f"%{name}")
    from gin import config as gc

    while isinstance(value, gc.ConfigurableReference):
        value = gin.query_parameter(f"%{value.config_key[0]}")
    return value


def config_text() -> str:
    """The parsed gin config (all bindings, macros resolved as written)."""
    import gin

    return gin.config_str()


OPERATIVE_CONFIG_FILE = "config.gin"


def write_operative_config(model_dir: str) -> str:
    """Writes `<model_dir>/config.gin`, gin's operative config (only the
    parameters the run's configurables actually used, macros included), as
    T5X does; atomically, on any fileio path. Returns the path."""
    import gin

    from ptransfer.core import fileio

    fileio.makedirs(model_dir)
    path = fileio.join(model_dir, OPERATIVE_CONFIG_FILE)
    return fileio.atomic_write(path, gin.operative_config_str())
