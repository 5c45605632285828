"""The prompt bank: trained prompts keyed by backbone, task and run.

Layout (one entry per run; several seeds of a task are several runs):

  <bank>/<backbone>/<task>/<run>/
      prompt.npy      float32 [L, d_model]
      meta.json       backbone, task, run, prompt_length, d_model, init, steps,
                      best_score, metric, seed, ptransfer_version, created,
                      provenance {...} (plus anything the writer adds)
      metrics.jsonl   one JSON object per logged eval (the whole curve)
      <name>.npy      optional extra arrays (`write_entry(extras=...)`), e.g.
                      adam_mu.npy / adam_nu.npy, the AdamW moments that belong
                      with prompt.npy (`ADAM_MOMENTS`), and the run's other prompt:
                      final_prompt.npy when prompt.npy is the best-scoring one,
                      best_prompt.npy when it is the final one (`read_prompt`)
      COMPLETE        written last: sha256 of the files above

Writes are atomic: everything goes into a hidden temp directory next to the
final one (`.tmp-<run>-*`), each file and the directory are fsynced, then
the temp directory is renamed into place under an exclusive flock on the
task directory. Creation is exclusive: of several writers of one new entry
exactly one wins and every other gets a CheckpointError naming the entry and
the winner (its provenance and time); concurrent overwriters are serialized,
the last one's entry stays. An entry counts only when its
final directory holds COMPLETE, so a crash at any point leaves nothing that
`list_entries` shows (at most a hidden `.tmp-*` directory, which is ignored
and may be deleted). Names are restricted to [A-Za-z0-9._+=@-] not starting
with '.', and resolved paths are checked, so no entry lands outside the bank.
Prompts are read with `np.load(allow_pickle=False)`.

A bank may be remote (gs://, any tf.io.gfile filesystem; see
`ptransfer.core.fileio`). An object store has no atomic directory rename, so there
the files are written straight into the entry directory (each via a temp
object and a rename) and COMPLETE, with the files' sha256, is written last:
a crash leaves an entry without COMPLETE, which is not listed and which the
next write of that run replaces; an overwrite first deletes the old COMPLETE.
Single-writer rule on gs://: an object store offers no exclusive rename and
no lock, so two writers of the same run at the same time are not detected
there; give concurrent jobs distinct run names (the trainer's default is the
model dir's base name) when they share a remote bank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import uuid
from typing import Iterable, Mapping, Sequence

import numpy as np

from ptransfer import __version__
from ptransfer.core import fileio
from ptransfer.core.errors import CheckpointError, ConfigError, DataError, close_matches_hint

PROMPT_FILE = "prompt.npy"
META_FILE = "meta.json"
METRICS_FILE = "metrics.jsonl"
COMPLETE_FILE = "COMPLETE"
ENTRY_FILES = (PROMPT_FILE, META_FILE, METRICS_FILE)
# Extras the trainer writes: the AdamW first / second moments of prompt.npy
# ([L, D] each; for INIT_OPTIMIZER='source'), and the run's final prompt.
ADAM_MOMENTS = ("adam_mu", "adam_nu")
FINAL_PROMPT = "final_prompt"
BEST_PROMPT = "best_prompt"
PROMPT_KINDS = ("exported", "best", "final")

# Keys the writer must supply (a value may be None when unknown, e.g. for an
# imported prompt); backbone, task, run, prompt_length and d_model are filled in.
REQUIRED_META = ("init", "steps", "best_score", "metric", "seed")

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]{0,199}")


def safe_name(raw: str, default: str = "run") -> str:
    """`raw` made into a name `check_name` accepts: characters outside
    [A-Za-z0-9._+=@-] become '_', leading non-alphanumerics are dropped, at most
    200 characters; `default` when nothing is left."""
    name = re.sub(r"[^A-Za-z0-9._+=@-]", "_", raw)
    return re.sub(r"^[^A-Za-z0-9]+", "", name)[:200] or default


def check_name(kind: str, name) -> str:
    """A backbone / task / run name that is one safe path component."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"bank {kind} name {name!r} is not allowed: use 1-200 letters, digits or ._+=@- "
            "(not starting with '.', no '/'), so the entry stays inside the bank directory.")
    return name


def _inside(root: str, path: str) -> str:
    """`path` if its real location is under `root`'s, else ConfigError.

    Remote paths have no symlinks, and every component below `root` passed
    `check_name`, so they are inside by construction.
    """
    if fileio.is_remote(root) or fileio.is_remote(path):
        return path
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root or real == real_root:
        raise ConfigError(f"{path!r} resolves to {real!r}, outside the bank {real_root!r}; "
                          "remove the symlink or choose another name.")
    return path


def entry_dir(bank_dir: str, backbone: str, task: str, run: str) -> str:
    """Path of an entry (whether or not it exists), checked to stay inside the bank."""
    path = fileio.join(bank_dir, check_name("backbone", backbone), check_name("task", task),
                        check_name("run", run))
    return _inside(bank_dir, path)


@dataclasses.dataclass(frozen=True)
class BankEntry:
    """A complete entry: where it is and its meta (the prompt is read on demand)."""

    path: str
    backbone: str
    task: str
    run: str
    meta: dict

    @property
    def ref(self) -> str:
        return f"{self.backbone}/{self.task}/{self.run}"

    def read(self):
        """(prompt float32 [L, D], meta, metrics rows); see `read_entry`."""
        return read_entry(self.path)


# ---- writing -----------------------------------------------------------------

def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> str:
    """Writes and fsyncs `data`; returns its sha256."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _complete_meta(backbone, task, run, prompt: np.ndarray, meta: Mapping) -> dict:
    meta = dict(meta)
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ConfigError(f"bank entry meta lacks {', '.join(missing)} (required: "
                          f"{', '.join(REQUIRED_META)}; use None for an unknown value).")
    derived = {"backbone": backbone, "task": task, "run": run,
               "prompt_length": int(prompt.shape[0]), "d_model": int(prompt.shape[1])}
    for key, value in derived.items():
        if key in meta and meta[key] != value:
            raise ConfigError(f"bank entry meta says {key}={meta[key]!r} but the entry has "
                              f"{key}={value!r}.")
        meta[key] = value
    meta.setdefault("ptransfer_version", __version__)
    meta.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat())
    meta.setdefault("provenance", {})
    return meta


def _extra_arrays(extras: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    out = {}
    for name, value in (extras or {}).items():
        check_name("extra array", name)
        arr = np.ascontiguousarray(np.asarray(value, np.float32))
        if f"{name}.npy" in ENTRY_FILES or not np.isfinite(arr).all():
            raise ConfigError(f"bank extra {name!r}: a reserved name or non-finite values.")
        out[f"{name}.npy"] = arr
    return out


def write_entry(bank_dir: str, backbone: str, task: str, run: str, prompt, meta: Mapping,
                metrics_rows: Iterable[Mapping] = (), *, overwrite: bool = False,
                extras: Mapping[str, np.ndarray] | None = None) -> str:
    """Atomically writes one entry and returns its path.

    Args:
      prompt: [L, D], stored as float32; NaN or inf is refused.
      meta: at least REQUIRED_META; backbone/task/run/prompt_length/d_model
        are filled in (and must agree if given), as are ptransfer_version,
        created (UTC ISO time) and provenance ({}).
      metrics_rows: the eval curve, one mapping per row (may be a generator).
      overwrite: replace an existing entry of the same run (old moved to a
        hidden .trash-* dir, new renamed in, old deleted; a crash between the
        two renames lists neither); otherwise an existing entry is an error.
      extras: optional named float32 arrays, stored as `<name>.npy` with their
        checksums in COMPLETE (`read_extra`).

    Local banks: creation is atomic and exclusive (one winner; every other
    writer of the same new entry gets one CheckpointError naming the entry
    and the winner), overwriters are serialized by a flock on the task
    directory, and no .tmp-*/.trash-* directory is left behind. gs:// and
    other object stores: single writer per entry (see the module docstring).
    """
    path = entry_dir(bank_dir, backbone, task, run)
    extra_files = _extra_arrays(extras)
    arr = np.asarray(prompt)
    if arr.ndim != 2 or arr.shape[0] == 0 or not np.issubdtype(arr.dtype, np.number):
        raise ConfigError(f"a bank prompt must be a numeric [L, D] array, got {arr.dtype} "
                          f"{arr.shape}.")
    arr = np.ascontiguousarray(arr, np.float32)
    if not np.isfinite(arr).all():
        raise CheckpointError(f"prompt for {backbone}/{task}/{run} contains NaN or inf; "
                              "not writing it to the bank (check the run for a diverged loss).")
    full_meta = _complete_meta(backbone, task, run, arr, meta)
    try:
        meta_bytes = (json.dumps(full_meta, indent=2, sort_keys=True, allow_nan=False)
                      + "\n").encode()
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bank entry meta is not plain JSON (numbers must be finite): {e}") from None
    if fileio.is_remote(path):
        return _write_entry_remote(path, f"{backbone}/{task}/{run}", arr, meta_bytes,
                                   metrics_rows, overwrite, extra_files)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    _inside(bank_dir, parent)
    ref = f"{backbone}/{task}/{run}"
    if is_complete(path) and not overwrite:
        raise _exists_error(ref, path)
    tmp = fileio.make_temp_dir(parent, f".tmp-{run}-")
    try:
        digests = {PROMPT_FILE: _write_file(os.path.join(tmp, PROMPT_FILE), _npy_bytes(arr)),
                   META_FILE: _write_file(os.path.join(tmp, META_FILE), meta_bytes)}
        with open(os.path.join(tmp, METRICS_FILE), "x") as f:
            for row in metrics_rows:
                f.write(json.dumps(dict(row), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with open(os.path.join(tmp, METRICS_FILE), "rb") as f:
            digests[METRICS_FILE] = hashlib.sha256(f.read()).hexdigest()
        for name, extra in extra_files.items():
            digests[name] = _write_file(os.path.join(tmp, name), _npy_bytes(extra))
        _write_file(os.path.join(tmp, COMPLETE_FILE),
                    (json.dumps({"sha256": digests}, indent=2, sort_keys=True) + "\n").encode())
        _fsync_dir(tmp)
        with _locked(parent):
            _swap_in(tmp, path, parent, run, ref, overwrite)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


@contextlib.contextmanager
def _locked(directory: str):
    """An exclusive flock on `directory` (a task's directory) for the final swap.

    The OS drops the lock when its holder dies, so a killed writer never
    leaves a stale lock, and nothing is left on disk.
    """
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _swap_in(tmp: str, path: str, parent: str, run: str, ref: str, overwrite: bool) -> None:
    """Renames the finished `tmp` to `path` (caller holds `_locked(parent)`).

    Without overwrite the rename itself is the exclusive step: renaming a
    directory onto a non-empty one fails, so of several writers exactly one
    wins even without the lock. With overwrite the old entry is moved to a
    hidden .trash-* directory first and deleted after the swap.
    """
    for stale in os.listdir(parent):  # left by a writer killed between the two renames
        if stale.startswith(f".trash-{run}-"):
            shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
    trash = None
    if os.path.lexists(path):
        if not overwrite and is_complete(path):
            raise _exists_error(ref, path)
        # overwrite, or a leftover without COMPLETE (not an entry): move it aside
        trash = os.path.join(parent, f".trash-{run}-{uuid.uuid4().hex[:8]}")
        os.rename(path, trash)
    try:
        os.rename(tmp, path)
    except OSError as e:
        if trash is not None:
            os.rename(trash, path)
        if is_complete(path):
            raise _exists_error(ref, path) from None
        raise CheckpointError(f"cannot move the new bank entry {ref} into place at {path} "
                              f"({e}); check the bank directory's permissions.") from None
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _writer_of(path: str) -> str:
    """Who wrote the entry at `path`, for error messages."""
    try:
        meta = _read_meta(path)
    except CheckpointError:
        return "an unknown writer (its meta.json is unreadable)"
    prov = meta.get("provenance") or {}
    origin = prov.get("model_dir") or prov.get("imported_from") or prov.get("source") or prov.get("kind") or "unknown origin"
    return f"{origin} (written {meta.get('created', 'at an unknown time')})"


def _exists_error(ref: str, path: str) -> CheckpointError:
    return CheckpointError(f"bank entry {ref} already exists at {path}, written by "
                           f"{_writer_of(path)}; choose another run name (--gin.RUN_NAME) or "
                           "overwrite it explicitly.")


def _write_entry_remote(path: str, ref: str, arr: np.ndarray, meta_bytes: bytes,
                        metrics_rows: Iterable[Mapping], overwrite: bool,
                        extra_files: Mapping[str, np.ndarray]) -> str:
    """`write_entry` on an object store: files in place, COMPLETE last (module docstring)."""
    metrics_bytes = "".join(json.dumps(dict(row), sort_keys=True) + "\n"
                            for row in metrics_rows).encode()
    complete = fileio.join(path, COMPLETE_FILE)
    if is_complete(path):
        if not overwrite:
            raise CheckpointError(f"bank entry {ref} already exists at {path}; "
                                  "choose another run name or overwrite it explicitly.")
        fileio.remove(complete)  # unlisted from here until the new COMPLETE lands
    fileio.makedirs(path)
    digests = {}
    files = [(PROMPT_FILE, _npy_bytes(arr)), (META_FILE, meta_bytes),
             (METRICS_FILE, metrics_bytes)]
    files += [(name, _npy_bytes(extra)) for name, extra in extra_files.items()]
    for name, data in files:
        fileio.atomic_write(fileio.join(path, name), data)
        digests[name] = hashlib.sha256(data).hexdigest()
    fileio.atomic_write(complete, (json.dumps({"sha256": digests}, indent=2, sort_keys=True)
                                   + "\n").encode())
    return path


# ---- reading -----------------------------------------------------------------

def is_complete(path: str) -> bool:
    return fileio.isfile(fileio.join(path, COMPLETE_FILE))


def _read_meta(path: str) -> dict:
    meta_path = fileio.join(path, META_FILE)
    try:
        with fileio.open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"bank entry {path}: unreadable {META_FILE} ({e}); delete the "
                              "entry and write it again.") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"bank entry {path}: {META_FILE} is not a JSON object.")
    return meta


def _subdirs(path: str) -> list[str]:
    try:
        names = sorted(fileio.listdir(path))
    except NotADirectoryError:
        return []
    return [n for n in names if _NAME_RE.fullmatch(n) and fileio.isdir(fileio.join(path, n))]


def list_entries(bank_dir: str, backbone: str | None = None, task: str | None = None, *,
                 require: bool = False) -> list[BankEntry]:
    """Complete entries, sorted by (backbone, task, run), optionally filtered.

    `require=True` turns "no entries" into a DataError naming what the bank
    does hold. Incomplete and hidden directories are never listed; a complete
    entry whose meta.json is unreadable is left out with a warning naming its
    path (`scan_entries` returns those too), so one bad entry blocks no other.
    """
    entries, bad = scan_entries(bank_dir, backbone, task)
    for path, message in bad:
        log.warning("skipping bank entry %s: %s", path, message)
    if require and not entries:
        raise DataError(_empty_message(bank_dir, backbone, task))
    return entries


def scan_entries(bank_dir: str, backbone: str | None = None, task: str | None = None
                 ) -> tuple[list[BankEntry], list[tuple[str, str]]]:
    """(good complete entries, [(path, problem)] of complete entries whose meta is unreadable)."""
    if not fileio.isdir(bank_dir):
        raise DataError(f"prompt bank {bank_dir!r} does not exist; train prompts first "
                        "(`ptransfer train` writes them there) or pass the right --bank.")
    for kind, name in (("backbone", backbone), ("task", task)):
        if name is not None:
            check_name(kind, name)
    out, bad = [], []
    for bb in _subdirs(bank_dir):
        if backbone is not None and bb != backbone:
            continue
        for tk in _subdirs(fileio.join(bank_dir, bb)):
            if task is not None and tk != task:
                continue
            for run in _subdirs(fileio.join(bank_dir, bb, tk)):
                path = fileio.join(bank_dir, bb, tk, run)
                if is_complete(path):
                    try:
                        out.append(BankEntry(path, bb, tk, run, _read_meta(path)))
                    except CheckpointError as e:
                        bad.append((path, str(e)))
    return out, bad


def _empty_message(bank_dir, backbone, task) -> str:
    everything = list_entries(bank_dir)
    if not everything:
        return (f"prompt bank {bank_dir!r} has no complete entries; train prompts first "
                "(`ptransfer train`) or import one (`ptransfer bank import`).")
    wanted = ", ".join(f"{k}={v!r}" for k, v in (("backbone", backbone), ("task", task)) if v)
    backbones = sorted({e.backbone for e in everything})
    tasks = sorted({e.task for e in everything if backbone in (None, e.backbone)})
    hint = ""
    if backbone is not None and backbone not in backbones:
        hint = close_matches_hint(backbone, backbones)
    elif task is not None:
        hint = close_matches_hint(task, tasks) if tasks else f" Backbones: {', '.join(backbones)}."
    return f"prompt bank {bank_dir!r} has no complete entry for {wanted}.{hint}"


def read_entry(path: str):
    """(prompt float32 [L, D], meta dict, metrics list of dicts) of a complete entry."""
    if not fileio.isdir(path):
        raise DataError(f"no bank entry at {path!r}; `ptransfer bank list` shows the entries.")
    if not is_complete(path):
        raise CheckpointError(f"bank entry {path} is incomplete (no {COMPLETE_FILE} marker: an "
                              "interrupted write); delete it and write it again.")
    try:
        with fileio.open(fileio.join(path, COMPLETE_FILE)) as f:
            digests = json.load(f)["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"bank entry {path}: unreadable {COMPLETE_FILE} ({e}).") from None
    blobs = {}
    for name in ENTRY_FILES:
        try:
            with fileio.open(fileio.join(path, name), "rb") as f:
                blobs[name] = f.read()
        except OSError as e:
            raise CheckpointError(f"bank entry {path}: cannot read {name} ({e}).") from None
        if hashlib.sha256(blobs[name]).hexdigest() != digests.get(name):
            raise CheckpointError(f"bank entry {path}: {name} does not match its checksum in "
                                  f"{COMPLETE_FILE} (modified or corrupt); write the entry again.")
    try:
        prompt = np.load(io.BytesIO(blobs[PROMPT_FILE]), allow_pickle=False)
    except ValueError as e:
        raise CheckpointError(f"bank entry {path}: {PROMPT_FILE} is not a plain array ({e}).") from None
    meta = _read_meta(path)
    if prompt.dtype != np.float32 or prompt.ndim != 2 or \
            prompt.shape != (meta.get("prompt_length"), meta.get("d_model")):
        raise CheckpointError(
            f"bank entry {path}: {PROMPT_FILE} holds {prompt.dtype} {prompt.shape}, but meta says "
            f"float32 [{meta.get('prompt_length')}, {meta.get('d_model')}].")
    try:
        metrics = [json.loads(line) for line in blobs[METRICS_FILE].decode().splitlines()
                   if line.strip()]
    except ValueError as e:
        raise CheckpointError(f"bank entry {path}: bad line in {METRICS_FILE} ({e}).") from None
    return prompt, meta, metrics


def read_extra(path: str, name: str) -> np.ndarray | None:
    """The extra array `name` of a complete entry (checksum verified), or None when
    the entry has none."""
    file = f"{check_name('extra array', name)}.npy"
    try:
        with fileio.open(fileio.join(path, COMPLETE_FILE)) as f:
            digest = json.load(f)["sha256"].get(file)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"bank entry {path}: unreadable {COMPLETE_FILE} ({e}).") from None
    if digest is None:
        return None
    try:
        with fileio.open(fileio.join(path, file), "rb") as f:
            blob = f.read()
    except OSError as e:
        raise CheckpointError(f"bank entry {path}: cannot read {file} ({e}).") from None
    if hashlib.sha256(blob).hexdigest() != digest:
        raise CheckpointError(f"bank entry {path}: {file} does not match its checksum in "
                              f"{COMPLETE_FILE} (modified or corrupt); write the entry again.")
    return np.load(io.BytesIO(blob), allow_pickle=False)


def read_prompt(path: str, which: str = "exported") -> np.ndarray:
    """One prompt of an entry, float32 [L, D]: 'exported' (prompt.npy), or the run's
    'best' / 'final' prompt (prompt.npy when meta `exported` says it is that one,
    else the best_prompt / final_prompt extra). DataError when the entry lacks it
    (imported or older entries keep only prompt.npy)."""
    if which not in PROMPT_KINDS:
        raise ConfigError(f"prompt {which!r}: use one of {PROMPT_KINDS}.")
    prompt, meta, _ = read_entry(path)
    if which == "exported" or meta.get("exported") == which:
        return prompt
    extra = read_extra(path, FINAL_PROMPT if which == "final" else BEST_PROMPT)
    if extra is None:
        raise DataError(f"bank entry {path} keeps only its {meta.get('exported', 'exported')} "
                        f"prompt, not the {which} one (written by an import or before the "
                        "bank kept both); retrain the run to get it.")
    return extra


def find_entry(bank_dir: str, backbone: str, task: str, run: str | None = None) -> BankEntry:
    """The entry backbone/task/run; with run=None, the task's only entry."""
    entries = list_entries(bank_dir, backbone, task, require=True)
    if run is None:
        if len(entries) > 1:
            raise ConfigError(f"{backbone}/{task} has {len(entries)} runs in the bank "
                              f"({', '.join(e.run for e in entries)}); name one.")
        return entries[0]
    check_name("run", run)
    for e in entries:
        if e.run == run:
            return e
    raise DataError(f"no complete bank entry {backbone}/{task}/{run}."
                    + close_matches_hint(run, [e.run for e in entries]))


def resolve_ref(bank_dir: str, ref: str) -> BankEntry:
    """An entry from 'backbone/task[/run]' or from the path of an entry directory."""
    if fileio.isdir(ref) and is_complete(ref):
        path = ref.rstrip("/") if fileio.is_remote(ref) else os.path.normpath(ref)
        run_dir, run = os.path.split(path)
        task_dir, task = os.path.split(run_dir)
        backbone = os.path.basename(task_dir)
        return BankEntry(path, backbone, task, run, _read_meta(path))
    parts = ref.strip("/").split("/")
    if len(parts) not in (2, 3):
        raise ConfigError(f"bank entry {ref!r}: use backbone/task[/run] or an entry directory.")
    return find_entry(bank_dir, *parts)


# ---- seeds -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SeedSummary:
    """Best scores of one (backbone, task) over its runs.

    std is the sample standard deviation (ddof=1); None for a single run.
    Runs without a best score (e.g. imported prompts) are left out of n.
    """

    backbone: str
    task: str
    metric: str | None
    n: int
    mean: float | None
    std: float | None
    runs: tuple[str, ...]
    seeds: tuple
    best_scores: tuple[float, ...]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def summarize_seeds(entries: Sequence[BankEntry]) -> dict[tuple[str, str], SeedSummary]:
    """(backbone, task) -> mean / std of the best score over the entries' runs."""
    groups: dict[tuple[str, str], list[BankEntry]] = {}
    for e in entries:
        groups.setdefault((e.backbone, e.task), []).append(e)
    out = {}
    for key, group in sorted(groups.items()):
        scored = [e for e in group if isinstance(e.meta.get("best_score"), (int, float))
                  and math.isfinite(e.meta["best_score"])]
        metrics = sorted({str(e.meta.get("metric")) for e in scored})
        if len(metrics) > 1:
            raise ConfigError(f"runs of {key[0]}/{key[1]} report different metrics "
                              f"({', '.join(metrics)}); their best scores cannot be averaged.")
        scores = tuple(float(e.meta["best_score"]) for e in scored)
        out[key] = SeedSummary(
            backbone=key[0], task=key[1], metric=metrics[0] if metrics else None,
            n=len(scores), mean=float(np.mean(scores)) if scores else None,
            std=float(np.std(scores, ddof=1)) if len(scores) > 1 else None,
            runs=tuple(e.run for e in scored), seeds=tuple(e.meta.get("seed") for e in scored),
            best_scores=scores)
    return out
