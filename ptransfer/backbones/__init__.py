"""Frozen backbones: T5 (v1.0 / v1.1 / LM-adapted), LLaMA-family decoder-only,
BERT / RoBERTa masked LMs; their presets and `load_backbone(spec)`.

Spec forms:
  preset:<name>                  random init of a named shape (tests, benchmarks)
  hf:<dir>                       HF safetensors + config.json (sharded index too)
  t5x:<preset>:<checkpoint_dir>  a T5X checkpoint with the preset's shapes
  gguf:<file>                    a GGUF file (LLaMA architecture)
"""

from __future__ import annotations

import importlib
import json
import os

from ptransfer.errors import CheckpointError, ConfigError, close_matches_hint

# family name -> module; each module defines PRESETS, from_preset, from_hf and
# HF_ARCHITECTURES (the `architectures` names of config.json it reads).
FAMILY_MODULES = {
    "t5": "ptransfer.backbones.t5",
    "llama": "ptransfer.backbones.llama",
    "mlm": "ptransfer.backbones.mlm",
}


def _family(name: str):
    return importlib.import_module(FAMILY_MODULES[name])


def all_presets() -> dict[str, str]:
    """Preset name -> family name."""
    out = {}
    for fam in FAMILY_MODULES:
        for preset in _family(fam).PRESETS:
            out[preset] = fam
    return out


def load_backbone(spec: str, *, dtype=None, mesh=None, seed: int = 0):
    """Returns a `Backbone` for `spec` (see module docstring).

    Args:
      dtype: storage dtype of the frozen params (e.g. jnp.bfloat16); None keeps
        float32. Compute dtype is a config field of each family.
      mesh: if given, params are placed directly into sharded device arrays.
      seed: random init seed for `preset:` specs.
    """
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ConfigError(f"backbone spec {spec!r} has no form; use preset:<name>, hf:<dir>, "
                          "t5x:<preset>:<dir> or gguf:<file>.")
    kw = dict(dtype=dtype, mesh=mesh)
    if kind == "preset":
        presets = all_presets()
        if rest not in presets:
            raise ConfigError(f"unknown preset {rest!r}." + close_matches_hint(rest, presets))
        return _family(presets[rest]).from_preset(rest, seed=seed, **kw)
    if kind == "hf":
        config_path = os.path.join(rest, "config.json")
        if not os.path.isfile(config_path):
            raise CheckpointError(f"no config.json in {rest!r}: an hf: spec needs a directory with "
                                  "config.json and model.safetensors (or a sharded index).")
        with open(config_path) as f:
            arch = (json.load(f).get("architectures") or ["?"])[0]
        for fam in FAMILY_MODULES:
            if arch in _family(fam).HF_ARCHITECTURES:
                return _family(fam).from_hf(rest, **kw)
        known = [a for fam in FAMILY_MODULES for a in _family(fam).HF_ARCHITECTURES]
        raise CheckpointError(f"{config_path}: architecture {arch!r} is not supported; "
                              f"supported: {', '.join(known)}.")
    if kind == "t5x":
        preset, sep, ckpt = rest.partition(":")
        if not sep:
            raise ConfigError(f"t5x spec {spec!r} needs a preset: t5x:<preset>:<checkpoint_dir>, "
                              "e.g. t5x:t5_1_1_base:/ckpts/checkpoint_1000000.")
        return _family("t5").from_t5x(ckpt, preset, **kw)
    if kind == "gguf":
        return _family("llama").from_gguf(rest, **kw)
    raise ConfigError(f"backbone spec {spec!r}: unknown form {kind!r}; use preset:, hf:, t5x: or gguf:.")
