"""`ptransfer tasks` (the registry as a table) and `ptransfer data check`.

Both read only the spec registry and the file system: no TensorFlow import.
"""

from __future__ import annotations

import os

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

def _sizes(spec: TaskSpec, data_dir: str, cache: str) -> str:
    sizes = dict(spec.sizes)
    if not sizes and spec.source.kind == "files" and not spec.source.missing(data_dir):
        from tasks import release_files

        try:
            sizes = {s: len(release_files.read_split(spec, data_dir, s)["label"])
                     for s in spec.splits}
        except Exception as e:  # a broken file is reported by `data check`, not here
            return f"unreadable: {e}"[:60]
    return " ".join(f"{s}={sizes[s] if s in sizes else '?'}" for s in spec.splits)


def _label_text(spec: TaskSpec) -> str:
    if not spec.is_classification:
        return "(text)"
    return "/".join(spec.label_words)


def task_table(data_dir: str | None = None, cache_dir: str | None = None) -> list[list[str]]:
    """Rows: name, type, source, splits with sizes, label words, metrics."""
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
        rows.append([name, spec.type, spec.source.describe, _sizes(spec, data_dir, cache) + skew,
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
    print(format_table(header, task_table(args.data_dir)))
    print("\nThe first metric is the model-selection score. Classification tasks also report "
          "macro_f1. 'eval-only': no train split (rt is the Rotten Tomatoes reviews not in mr).")
    return 0


# ---- ptransfer data check ----------------------------------------------------------

def data_status(data_dir: str | None = None, cache_dir: str | None = None) -> list[tuple]:
    """(name, present, where or what to do) for every task."""
    data_dir = resolve_data_dir(data_dir)
    cache = asset_cache_dir(cache_dir)
    out = []
    for spec in SPECS.values():
        src = spec.source
        if src.kind == "tfds":
            where = src.prepared_dir(data_dir)
            out.append((spec.name, bool(where), where or src.instructions(data_dir)))
        elif src.kind == "files":
            missing = src.missing(data_dir)
            out.append((spec.name, not missing,
                        os.path.join(data_dir, src.subdir) if not missing
                        else src.instructions(data_dir)))
        else:
            missing = src.missing(cache)
            out.append((spec.name, not missing,
                        cache if not missing else src.instructions(cache)))
    return out


def _run_check(args) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    status = data_status(data_dir, args.cache_dir)
    print(f"data root: {data_dir}\nasset cache: {asset_cache_dir(args.cache_dir)}\n")
    for name, present, detail in status:
        print(f"{'ok     ' if present else 'MISSING'}  {name:17s} {detail}")
    missing = [n for n, ok, _ in status if not ok]
    print(f"\n{len(status) - len(missing)} of {len(status)} datasets present.")
    return 1 if missing else 0
