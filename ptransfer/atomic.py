"""Writes that never leave a half-written file: write a temp file beside the
target, then rename it over the target (atomic on POSIX)."""

from __future__ import annotations

import json
import os

import numpy as np


def write_json(path: str, data) -> str:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
    return path


def write_npy(path: str, array: np.ndarray) -> str:
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, array, allow_pickle=False)
    os.replace(tmp, path)
    return path
