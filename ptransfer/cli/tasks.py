"""`ptransfer tasks` (the registry as a table) and `ptransfer data check`.

Both check local data with `tasks.validation`, the check training makes.

Both read only the spec registry and the file system: no TensorFlow import.
"""

from __future__ import annotations

import os

from ptransfer.core.errors import DataError
from tasks import validation
from tasks.sources import asset_cache_dir, resolve_data_dir
from tasks.specs import SPECS, TaskSpec


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("tasks", help="list the registered tasks")
    p.add_argument("--data_dir", default=None, help="data root, to count local release files")
    p.set_defaults(func=_run_tasks)

    data = subparsers.add_parser("data", help="datasets: check what is present")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    check = data_sub.add_parser("check", help="for each of the paper's 17 datasets (and the "
                                              "offline corpora): present, or what to put where; "
                                              "exit status 1 if any is missing")
    check.add_argument("--data_dir", default=None,
                       help="data root (default $PTRANSFER_DATA, $TFDS_DATA_DIR, "
                            "~/tensorflow_datasets)")
    check.add_argument("--cache_dir", default=None, help="asset cache (default $PTRANSFER_CACHE)")
    check.set_defaults(func=_run_check)
    data.set_defaults(func=lambda args: data.print_help() or 1)


# ---- ptransfer tasks ----------------------------------------------------------------

def _sizes(spec: TaskSpec, data_dir: str, cache: str, problems: dict) -> str:
    """Split sizes; a task whose local files are present but invalid gets its
    DataError (the one training would stop with) in `problems`."""
    sizes = dict(spec.sizes)
    if not sizes and spec.source.kind == "files" and not spec.source.missing(data_dir):
        try:
            cols = validation.read_splits(spec, data_dir, cache)
        except DataError as e:
            problems[spec.name] = str(e)
            return "invalid (see below)"
        sizes = {s: len(c["label"]) for s, c in cols.items()}
    return " ".join(f"{s}={sizes[s] if s in sizes else '?'}" for s in spec.splits)


def _label_text(spec: TaskSpec) -> str:
    if not spec.is_classification:
        return "(text)"
    return "/".join(spec.label_words)


def task_table(data_dir: str | None = None, cache_dir: str | None = None,
               problems: dict | None = None) -> list[list[str]]:
    """Rows: name, type, source, splits with sizes, label words, metrics; the data
    errors of tasks whose files are invalid go into `problems` ({name: message})."""
    problems = {} if problems is None else problems
    data_dir = resolve_data_dir(data_dir)
    cache = asset_cache_dir(cache_dir)
    rows = []
    for spec in SPECS.values():
        name = spec.name + (" (eval-only)" if spec.evaluation_only else "")
        skew = ""
        if spec.class_counts:
            train = spec.class_counts.get("train") or spec.class_counts.get("test")
            top = max(train)
            skew = f" [{100 * top // sum(train)}% {spec.label_words[train.index(top)]}]"
        metrics = ", ".join(spec.metrics[:2]) if spec.is_classification else ", ".join(spec.metrics)
        rows.append([name, spec.type, spec.source.describe, _sizes(spec, data_dir, cache, problems) + skew,
                     _label_text(spec), metrics])
    return rows


def format_table(header, rows) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _run_tasks(args) -> int:
    header = ["name", "type", "source", "splits (examples)", "label words", "metrics"]
    problems: dict = {}
    print(format_table(header, task_table(args.data_dir, problems=problems)))
    for name, message in problems.items():
        print(f"\n{name}: {message}")
    print("\nThe first metric is the model-selection score. Classification tasks also report "
          "macro_f1. 'eval-only': no train split (rt is the Rotten Tomatoes reviews not in mr).")
    return 0


# ---- ptransfer data check ----------------------------------------------------------

def data_status(data_dir: str | None = None, cache_dir: str | None = None) -> list[tuple]:
    """(name, state, where or what to do) for every task; state is 'ok', 'MISSING'
    (files absent: how to get them) or 'INVALID' (present, but training would stop
    with this DataError: `tasks.validation`)."""
    data_dir = resolve_data_dir(data_dir)
    cache = asset_cache_dir(cache_dir)
    out = []
    for spec in SPECS.values():
        src = spec.source
        root = cache if src.kind == "corpus" else data_dir
        if src.missing(root):
            out.append((spec.name, "MISSING", src.instructions(root)))
            continue
        try:
            validation.check_data(spec, data_dir, cache)
        except DataError as e:
            out.append((spec.name, "INVALID", str(e)))
            continue
        where = (src.prepared_dir(data_dir) if src.kind == "tfds" else
                 os.path.join(data_dir, src.subdir) if src.kind == "files" else cache)
        out.append((spec.name, "ok", where))
    return out


def _run_check(args) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    status = data_status(data_dir, args.cache_dir)
    print(f"data root: {data_dir}\nasset cache: {asset_cache_dir(args.cache_dir)}\n")
    for name, state, detail in status:
        print(f"{state:7s}  {name:17s} {detail}")
    bad = [n for n, state, _ in status if state != "ok"]
    print(f"\n{len(status) - len(bad)} of {len(status)} datasets present and readable.")
    return 1 if bad else 0
