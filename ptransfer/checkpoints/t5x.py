"""T5X checkpoints: read and write the layout `t5x.checkpoints.Checkpointer` uses.

A checkpoint is a directory `checkpoint_<step>/` holding

  checkpoint                 msgpack (flax.serialization) of
                             {"version": 3, "optimizer": {"target": <params>,
                                                          "state": {"step": ..., ...}}}
  target.encoder.layers_0.attention.query.kernel/   one zarr array per parameter
  ...                                               (written with tensorstore)

Inside the msgpack each parameter leaf is either the array itself (T5X writes
unpartitioned arrays inline) or a tensorstore spec dict
`{"driver": "zarr", "dtype": ..., "kvstore": {"driver": "file", "path":
"target.encoder...kernel"}, "metadata": {"shape", "chunks", "compressor"}}`
whose path is relative to the checkpoint directory (specs written to GCS say
driver "gcs"; their path is resolved the same way). Version-2 checkpoints
stored bfloat16 as uint16; those are reinterpreted.

Only msgpack and zarr are read (nothing is unpickled), and array paths from
the msgpack must stay inside the checkpoint directory.

Paths go through `ptransfer.core.fileio`, so a checkpoint may live on any
filesystem tf.io.gfile knows. Zarr arrays are read by tensorstore with the
kvstore driver matching the path: `file` for a local path, `gcs` for
`gs://bucket/...` (tensorstore's own GCS client: parallel chunk reads, the
usual Google credentials); on any other scheme (`ram://`, `s3://` through
tensorflow-io, ...) the array's files are copied through fileio into a
tensorstore `memory` kvstore first.
"""

from __future__ import annotations

import os
import posixpath
import re

import numpy as np

from ptransfer.checkpoints.tree import flatten, unflatten
from ptransfer.core import fileio
from ptransfer.core.errors import CheckpointError

VERSION = 3
CHECKPOINT_FILE = "checkpoint"
_CHUNK_BYTES = 64 * 1024 * 1024  # T5X's desired chunk size


def _is_spec(x) -> bool:
    return isinstance(x, dict) and {"driver", "kvstore", "metadata"} <= set(x)


def _flatten(tree, prefix=""):
    """Nested dict -> {"a/b": leaf}, stopping at tensorstore spec dicts."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not _is_spec(value):
            out.update(_flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def resolve_checkpoint_dir(path: str) -> str:
    """A `checkpoint_<step>` dir, the `checkpoint` file in it, or a parent
    directory of several (the latest step wins) -> the checkpoint directory."""
    path = path.rstrip("/") if fileio.is_remote(path) else path
    if posixpath.basename(path) == CHECKPOINT_FILE and fileio.isfile(path):
        return posixpath.dirname(path) if fileio.is_remote(path) else (os.path.dirname(path) or ".")
    if not fileio.isdir(path):
        raise CheckpointError(f"T5X checkpoint {path!r} does not exist; pass a checkpoint_<step> "
                              "directory (it holds a msgpack file named 'checkpoint').")
    if fileio.isfile(fileio.join(path, CHECKPOINT_FILE)):
        return path
    steps = []
    for name in fileio.listdir(path):
        m = re.fullmatch(r"checkpoint_(\d+)", name)
        if m and fileio.isfile(fileio.join(path, name, CHECKPOINT_FILE)):
            steps.append((int(m.group(1)), name))
    if not steps:
        raise CheckpointError(f"{path} is not a T5X checkpoint: no '{CHECKPOINT_FILE}' file in it "
                              "and no checkpoint_<step>/ subdirectory holding one.")
    return fileio.join(path, max(steps)[1])


def kvstore_spec(array_dir: str) -> dict | None:
    """The tensorstore kvstore that reads `array_dir` directly, or None when
    tensorstore has no driver for its scheme (then the files are copied)."""
    if not fileio.is_remote(array_dir):
        return {"driver": "file", "path": array_dir}
    if array_dir.startswith("gs://"):
        bucket, _, key = array_dir[len("gs://"):].partition("/")
        return {"driver": "gcs", "bucket": bucket, "path": key.rstrip("/") + "/"}
    return None


def _copied_to_memory(array_dir: str) -> dict:
    """Copies a zarr array directory (any fileio path) into a tensorstore memory kvstore."""
    import tensorstore as ts

    kv = ts.KvStore.open({"driver": "memory"}).result()
    pending = [""]
    while pending:
        rel = pending.pop()
        here = fileio.join(array_dir, rel) if rel else array_dir
        for name in fileio.listdir(here):
            key = f"{rel}{name}"
            if fileio.isdir(fileio.join(array_dir, key)):
                pending.append(key + "/")
            else:
                kv[key] = fileio.read_bytes(fileio.join(array_dir, key))
    return kv

class T5XCheckpoint:
    """Read-only view of the parameters (`target/...`) of a T5X checkpoint.

    `keys()` are parameter paths without the "target/" prefix
    ("encoder/layers_0/attention/query/kernel"); `shape(path)` needs no array
    read; `get(path)` reads one array as numpy.
    """

    def __init__(self, path: str):
        from flax import serialization

        self.directory = resolve_checkpoint_dir(path)
        file = fileio.join(self.directory, CHECKPOINT_FILE)
        try:
            raw = fileio.read_bytes(file)
        except OSError as e:
            raise CheckpointError(f"cannot read the T5X checkpoint file {file}: {e}") from None
        if raw.startswith(b"model_checkpoint_path"):
            raise CheckpointError(f"{file} is a TensorFlow (Mesh TF) checkpoint index, not a T5X "
                                  "checkpoint; convert it with T5X's convert_tf_checkpoint first.")
        try:
            contents = serialization.msgpack_restore(raw)
        except Exception as e:  # msgpack raises several types for corrupt data
            raise CheckpointError(f"{file} is not a readable T5X msgpack checkpoint: {e}") from None
        if not isinstance(contents, dict):
            raise CheckpointError(f"{file} is not a T5X checkpoint (no state dict).")
        self.version = int(contents.get("version", 0))
        state = contents.get("optimizer", contents) if self.version else contents
        target = state.get("target") if isinstance(state, dict) else None
        if not isinstance(target, dict):
            raise CheckpointError(f"{file} has no 'target' parameter tree; is it a T5X checkpoint?")
        self.step = state.get("state", {}).get("step") if isinstance(state.get("state"), dict) else None
        self._leaves = _flatten(target)

    def keys(self) -> list[str]:
        return list(self._leaves)

    def __contains__(self, path: str) -> bool:
        return path in self._leaves

    def _leaf(self, path: str):
        if path not in self._leaves:
            raise CheckpointError(f"parameter {path!r} is missing from the T5X checkpoint "
                                  f"{self.directory}; does it match the chosen preset?")
        return self._leaves[path]

    def shape(self, path: str) -> tuple[int, ...]:
        leaf = self._leaf(path)
        if _is_spec(leaf):
            return tuple(int(d) for d in leaf["metadata"]["shape"])
        return tuple(np.shape(leaf))

    def _array_dir(self, spec: dict, path: str) -> str:
        kvstore = spec.get("kvstore") or {}
        if kvstore.get("driver") not in ("file", "gfile", "gcs"):
            raise CheckpointError(f"{self.directory}: {path} uses tensorstore driver "
                                  f"{kvstore.get('driver')!r}; only file/gcs zarr arrays are read.")
        parts = [p for p in (kvstore.get("path"), spec.get("path")) if p]
        rel = posixpath.join(*parts) if parts else ""
        # Arrays live inside the checkpoint directory; refuse anything else.
        if not rel or os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
            raise CheckpointError(f"{self.directory}: {path} points at {rel!r}, outside the "
                                  "checkpoint directory; the checkpoint is corrupt or unsafe.")
        return fileio.join(self.directory, rel)

    def get(self, path: str) -> np.ndarray:
        """The array at `path` (a numpy array in its stored dtype)."""
        import tensorstore as ts

        leaf = self._leaf(path)
        if not _is_spec(leaf):
            return np.asarray(leaf)
        if leaf.get("driver") != "zarr":
            raise CheckpointError(f"{self.directory}: {path} is stored with tensorstore driver "
                                  f"{leaf.get('driver')!r}; only zarr arrays are supported.")
        array_dir = self._array_dir(leaf, path)
        if not fileio.isdir(array_dir):
            raise CheckpointError(f"{self.directory}: the array directory for {path} "
                                  f"({posixpath.basename(array_dir)}) is missing.")
        try:
            direct = kvstore_spec(array_dir)
            if direct is not None:
                store = ts.open({"driver": "zarr", "kvstore": direct}, open=True, read=True).result()
            else:
                store = ts.open({"driver": "zarr"}, kvstore=_copied_to_memory(array_dir),
                                open=True, read=True).result()
            array = np.asarray(store.read().result())
        except Exception as e:  # tensorstore raises ValueError for every kind of failure
            raise CheckpointError(f"{self.directory}: cannot read {path}: {e}") from None
        if array.dtype == np.uint16 and (self.version < 3 or leaf.get("dtype") == "uint16"):
            import ml_dtypes

            array = array.view(ml_dtypes.bfloat16)
        want = self.shape(path)
        if array.shape != want:
            raise CheckpointError(f"{self.directory}: {path} has shape {array.shape} on disk but "
                                  f"the msgpack says {want}; the checkpoint is corrupt.")
        return array


def _chunk_shape(shape, itemsize: int) -> list[int]:
    """Chunks of at most ~64 MiB: repeatedly halve (or divide) the largest dimension."""
    chunks = list(shape)
    limit = max(1, _CHUNK_BYTES // itemsize)
    while chunks and int(np.prod(chunks)) > limit:
        i = int(np.argmax(chunks))
        d = chunks[i]
        chunks[i] = next((d // f for f in range(2, d + 1) if d % f == 0), 1)
    return [max(1, c) for c in chunks]


def _spec_for(path: str, array: np.ndarray) -> dict:
    return {
        "driver": "zarr",
        "dtype": np.dtype(array.dtype).name,
        "kvstore": {"driver": "file", "path": "target." + path.replace("/", ".")},
        "metadata": {"compressor": {"id": "gzip"}, "shape": list(array.shape),
                     "chunks": _chunk_shape(array.shape, np.dtype(array.dtype).itemsize)},
    }


def write_t5x_checkpoint(params, directory: str, *, step: int = 0,
                         inline_max_size: int = 0) -> str:
    """Writes `params` (nested dict with T5X names) as a T5X checkpoint.

    `directory` becomes a `checkpoint_<step>`-style directory (created
    atomically: written to a temp sibling, then renamed; an existing one is
    refused). Arrays of at most `inline_max_size` elements go into the msgpack
    itself, as T5X does for unpartitioned arrays; the rest become zarr arrays
    (gzip) written one at a time. Returns `directory`.
    """
    import jax
    import tensorstore as ts
    from flax import serialization

    directory = os.path.normpath(directory)
    if os.path.exists(directory):
        raise CheckpointError(f"{directory} already exists; T5X checkpoints are never overwritten. "
                              "Choose a new directory.")
    with fileio.atomic_directory(directory) as tmp:
        written = {}
        for path, value in flatten(params).items():
            array = np.asarray(jax.device_get(value))
            if array.size <= inline_max_size:
                written[path] = array
                continue
            spec = _spec_for(path, array)
            full = dict(spec, kvstore={"driver": "file",
                                       "path": os.path.join(tmp, spec["kvstore"]["path"])})
            store = ts.open(full, create=True, open=True).result()
            store.write(array).result()
            written[path] = spec
        state = {"version": VERSION,
                 "optimizer": {"target": unflatten(written),
                               "state": {"step": np.asarray(step, np.int32), "param_states": {}}}}
        with open(os.path.join(tmp, CHECKPOINT_FILE), "wb") as f:
            f.write(serialization.msgpack_serialize(state))
    return directory
