"""The one check of a task's local data, shared by `ptransfer data check`,
`ptransfer tasks --data_dir` and training (before a model is loaded).

`read_splits(spec, data_dir, cache)` reads each asked split with the same
reader training uses (release files, offline corpora) and returns their
columns, or raises the DataError training would stop with: a missing file,
a CSV with the wrong header, an empty split, a label outside the verbalizer.
A TFDS dataset is checked for being prepared (reading it needs TensorFlow;
its label names are checked when training reads it).
"""

from __future__ import annotations

from typing import Iterable

from ptransfer.core.errors import DataError
from tasks import corpora, release_files
from tasks.sources import asset_cache_dir, resolve_data_dir
from tasks.specs import TaskSpec


def read_splits(spec: TaskSpec, data_dir: str | None = None, cache_dir: str | None = None,
                splits: Iterable[str] | None = None) -> dict[str, dict]:
    """{split: columns} of `splits` (default: all of the task's) that the task has;
    for a TFDS task, {} once it is prepared. DataError for anything training refuses."""
    data_dir = resolve_data_dir(data_dir)
    wanted = [s for s in (spec.splits if splits is None else splits) if s in spec.splits]
    src = spec.source
    if src.kind == "tfds":
        if not src.prepared_dir(data_dir):
            raise DataError(f"task {spec.name!r}: " + src.instructions(data_dir))
        return {}
    if src.kind == "seqio":  # a user's seqio task reads its own data, checked as it is read
        missing = [s for s in (splits or ()) if s not in spec.splits]
        if missing:
            raise DataError(f"seqio task {spec.name!r} has no split(s) {missing}; it has "
                            f"{list(spec.splits)}.")
        return {}
    if src.kind == "files":
        return {s: release_files.read_split(spec, data_dir, s) for s in dict.fromkeys(wanted)}
    cache = asset_cache_dir(cache_dir)
    return {s: corpora.read_split(spec, cache, s) for s in dict.fromkeys(wanted)}


def check_data(spec: TaskSpec, data_dir: str | None = None, cache_dir: str | None = None,
               splits: Iterable[str] | None = None) -> None:
    """None, or the DataError training would stop with (see `read_splits`)."""
    read_splits(spec, data_dir, cache_dir, splits)
