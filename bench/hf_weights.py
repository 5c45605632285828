"""ptransfer params -> a HF safetensors file, so the PyTorch side runs the very same weights.

Uses the families' own name maps (`t5.hf_name`, `llama.hf_param_path`,
`gemma3.convert`) in reverse; kernels go back from `[in, out]` to HF's
`[out, in]`; Gemma's norm multipliers go back to HF's w (multiplier - 1).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np


def _llama_names(paths) -> dict[str, tuple[str, bool]]:
    from ptransfer.backbones import llama

    inverse = {}
    for hf, (ours, transpose) in llama._HF_GLOBAL.items():
        inverse[ours] = (hf, transpose)
    for path in paths:
        head, _, rest = path.partition("/")
        if head.startswith("layers_"):
            for hf_sub, (ours_sub, transpose) in llama._HF_LAYER.items():
                if ours_sub == rest:
                    inverse[path] = (f"model.layers.{head[len('layers_'):]}.{hf_sub}", transpose)
    return inverse


def _gemma3_names(paths) -> dict[str, tuple[str, bool]]:
    from ptransfer.backbones.gemma3 import convert

    inverse = {ours: (hf, transpose) for hf, (ours, transpose) in convert._HF_GLOBAL.items()}
    for path in paths:
        head, _, rest = path.partition("/")
        if head.startswith("layers_"):
            for hf_sub, (ours_sub, transpose) in convert._HF_LAYER.items():
                if ours_sub == rest:
                    inverse[path] = (f"model.layers.{head[len('layers_'):]}.{hf_sub}", transpose)
    return inverse


def hf_state_dict(backbone) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for the backbone's params."""
    from ptransfer.checkpoints.tree import flatten

    flat = flatten(backbone.params)
    if backbone.family == "t5":
        from ptransfer.backbones.t5 import hf_name

        names = {p: hf_name(p) for p in flat}
    elif backbone.family == "llama":
        names = _llama_names(flat)
    elif backbone.family == "gemma3":
        names = _gemma3_names(flat)
    else:
        raise ValueError(f"no HF export for family {backbone.family!r}")
    out = {}
    for path, array in flat.items():
        name, transpose = names[path]
        a = np.asarray(array, np.float32)
        if backbone.family == "gemma3" and path.endswith("/scale"):
            a = a - 1.0  # HF Gemma multiplies by (1 + w)
        out[name] = np.ascontiguousarray(a.T if transpose else a)
    return out


def export(backbone, directory: str) -> dict:
    """Writes <directory>/model.safetensors; returns what the torch side needs to
    build the matching HF model: {"family", "config" (the ptransfer config as a dict), "path"}."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "model.safetensors")
    save_file(hf_state_dict(backbone), path, metadata={"format": "pt"})
    return {"family": backbone.family, "config": dataclasses.asdict(backbone.config), "path": path}
