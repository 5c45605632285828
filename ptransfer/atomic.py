"""Writes that never leave a half-written file: write a temp file beside the
target, then rename it over the target (atomic on POSIX).

Remote paths (gs://, any tf.io.gfile filesystem) go through
`fileio.atomic_write`: a temp object renamed over the target, which an object
store does not do atomically (see `ptransfer.fileio`)."""

from __future__ import annotations

import io
import json
import os

import numpy as np

from ptransfer import fileio


def write_json(path: str, data) -> str:
    if fileio.is_remote(path):
        return fileio.atomic_write(path, json.dumps(data, indent=1))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
    return path


def write_npy(path: str, array: np.ndarray) -> str:
    if fileio.is_remote(path):
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        return fileio.atomic_write(path, buf.getvalue())
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, array, allow_pickle=False)
    os.replace(tmp, path)
    return path
