"""HF safetensors checkpoints: one file or a sharded `model.safetensors.index.json`.

Tensors are read one at a time from memory-mapped files, so loading never
holds more than the current tensor beyond what the caller keeps. PyTorch
pickles (`pytorch_model.bin`, `*.pt`) are refused: they can run code on load.
"""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors import safe_open

from ptransfer.core.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")

CONVERT_HINT = (
    "Convert it once with torch installed: `python -c \"import torch; from safetensors.torch "
    "import save_file; save_file({k: v.contiguous() for k, v in torch.load('pytorch_model.bin', "
    "weights_only=True).items()}, 'model.safetensors')\"` (or save_pretrained(..., "
    "safe_serialization=True)).")


class SafetensorsCheckpoint:
    """Read-only view of the tensors in a safetensors checkpoint directory.

    `get(name)` returns a numpy array ([out, in] for HF Linear weights, as stored).
    """

    def __init__(self, directory: str):
        self.directory = directory
        if not os.path.isdir(directory):
            raise CheckpointError(f"checkpoint directory {directory!r} does not exist.")
        index_path = os.path.join(directory, INDEX_FILE)
        single_path = os.path.join(directory, SINGLE_FILE)
        if os.path.isfile(index_path):
            try:
                with open(index_path) as f:
                    weight_map = json.load(f)["weight_map"]
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{index_path} is not a valid safetensors index "
                                      f"(needs a 'weight_map'): {e}") from None
            self._file_of = {name: os.path.join(directory, shard) for name, shard in weight_map.items()}
        elif os.path.isfile(single_path):
            self._file_of = None
            self._single = single_path
        else:
            pickles = [p for p in PICKLE_FILES if os.path.exists(os.path.join(directory, p))]
            if pickles:
                raise CheckpointError(
                    f"{directory} holds a PyTorch pickle ({pickles[0]}); ptransfer never unpickles "
                    f"checkpoints. {CONVERT_HINT}")
            raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}.")
        if self._file_of is None:
            self._file_of = {name: self._single for name in self._keys_in(self._single)}
        missing = sorted({p for p in self._file_of.values() if not os.path.isfile(p)})
        if missing:
            raise CheckpointError(f"safetensors shard(s) listed in the index are missing: "
                                  f"{', '.join(missing)}.")
        self._handles: dict[str, object] = {}

    @staticmethod
    def _keys_in(path: str) -> list[str]:
        try:
            with safe_open(path, framework="numpy") as f:
                return list(f.keys())
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None

    def keys(self) -> list[str]:
        return list(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def _handle(self, path: str):
        if path not in self._handles:
            self._handles[path] = safe_open(path, framework="numpy")
        return self._handles[path]

    def get(self, name: str, dtype=None) -> np.ndarray:
        """The tensor `name` as numpy; bfloat16 comes back as ml_dtypes.bfloat16."""
        if name not in self._file_of:
            raise CheckpointError(f"tensor {name!r} is missing from the checkpoint in "
                                  f"{self.directory}; is it the right architecture?")
        arr = self._handle(self._file_of[name]).get_tensor(name)
        return arr if dtype is None else arr.astype(dtype)
