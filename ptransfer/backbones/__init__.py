"""Frozen backbones: T5 (v1.0 / v1.1 / LM-adapted), LLaMA-family decoder-only,
Gemma 3, BERT / RoBERTa masked LMs; their presets and `load_backbone(spec)`.

Spec forms:
  preset:<name>                  random init of a named shape (tests, benchmarks)
  hf:<dir>                       HF safetensors + config.json (sharded index too)
  t5x:<preset>:<checkpoint_dir>  a T5X checkpoint with the preset's shapes
  gguf:<file>                    a GGUF file (`general.architecture` llama or gemma3)

`{cache}` in a spec stands for the offline asset cache (`ptransfer assets fetch`).

Options follow the spec after `?`, `&`-separated: `hf:/ckpt/roberta_base?input_layout=official`.
  input_layout=ptransfer|official  masked LMs only: the input layout (`mlm.INPUT_LAYOUTS`,
                                   the mlm module docstring); 'official' is the official
                                   RoBERTa code's, and the backbone's name gets '+official'
                                   so its bank entries stay apart from the default layout's.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os

from ptransfer.backbones.layers import cast_matmul_params, check_remat, is_low_precision
from ptransfer.checkpoints.gguf import GGUFCheckpoint, architecture_of
from ptransfer.core import assets
from ptransfer.core.errors import CheckpointError, ConfigError, close_matches_hint

# family name -> module; each module defines PRESETS, from_preset, from_hf and
# HF_ARCHITECTURES (the `architectures` names of config.json it reads).
FAMILY_MODULES = {
    "t5": "ptransfer.backbones.t5",
    "llama": "ptransfer.backbones.llama",
    "mlm": "ptransfer.backbones.mlm",
    "gemma3": "ptransfer.backbones.gemma3",
}

# GGUF `general.architecture` -> family (each module defines from_gguf).
GGUF_ARCHITECTURES = {"llama": "llama", "gemma3": "gemma3"}


def _family(name: str):
    return importlib.import_module(FAMILY_MODULES[name])


def all_presets() -> dict[str, str]:
    """Preset name -> family name."""
    out = {}
    for fam in FAMILY_MODULES:
        for preset in _family(fam).PRESETS:
            out[preset] = fam
    return out


def check_compute_dtype(name, where: str = "compute_dtype") -> str:
    """The canonical name of a floating compute dtype ('bfloat16', 'float32', ...),
    or one ConfigError."""
    import jax.numpy as jnp

    try:
        dt = jnp.dtype(name)
    except (TypeError, ValueError):
        dt = None
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise ConfigError(f"{where} {name!r} is not a floating-point dtype; use 'bfloat16', "
                          "'float32' or 'float16' (None keeps the backbone's own).")
    return dt.name


def configure_backbone(backbone, *, compute_dtype=None, remat=None):
    """`backbone` with its config's compute dtype and / or rematerialization
    replaced (None keeps the config's own); the same object when nothing changes.

    Neither setting changes the parameter tree's structure. A low-precision
    compute dtype (bfloat16, float16) gets its own copy of the matmul weights
    (`layers.MATMUL_PARAMS`) stored in that dtype, made once here, so no step
    casts the frozen weights; otherwise the params are shared, not copied.
    """
    import jax.numpy as jnp

    cfg = backbone.config
    changes = {}
    if compute_dtype is not None:
        name = check_compute_dtype(compute_dtype)
        old = cfg.dtype
        # T5 / LLaMA store the dtype's name, MLM a dtype object.
        new = name if isinstance(old, str) else jnp.dtype(name)
        if jnp.dtype(old) != jnp.dtype(name):
            changes["dtype"] = new
    if remat is not None:
        check_remat(remat, f"backbone {backbone.name!r}")
        if remat != cfg.remat:
            changes["remat"] = remat
    if not changes:
        return backbone
    # One variant per setting, kept on the backbone, so runs sharing one loaded
    # backbone also share the variant and its compiled steps.
    variants = backbone.variants
    key = tuple(sorted((k, str(v)) for k, v in changes.items()))
    source, variant = variants.get(key, (None, None))
    if variant is not None and source is backbone.params:
        return variant
    config = dataclasses.replace(cfg, **changes)
    if hasattr(config, "validate"):
        config.validate()
    # Fields with init=False (family, ...) are set again by the class; __post_init__
    # rebuilds the module from the new config.
    init = {f.name: getattr(backbone, f.name) for f in dataclasses.fields(backbone) if f.init}
    init["config"] = config
    if is_low_precision(config.dtype):
        init["params"] = cast_matmul_params(backbone.params, jnp.dtype(config.dtype))
    variant = type(backbone)(**init)
    variants[key] = (backbone.params, variant)
    return variant


SPEC_OPTIONS = {"input_layout": ("mlm",)}  # option -> the families that take it


def split_spec_options(spec: str) -> tuple[str, dict[str, str]]:
    """(the spec without its `?options`, {option: value}); one ConfigError for an
    unknown option or one without a value."""
    base, sep, query = spec.partition("?")
    if not sep:
        return spec, {}
    options = {}
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        if key not in SPEC_OPTIONS or not eq or not value:
            raise ConfigError(f"backbone spec {spec!r}: option {item!r} is not understood; "
                              f"options are {', '.join(k + '=VALUE' for k in SPEC_OPTIONS)} "
                              "(e.g. hf:/path/roberta_base?input_layout=official)."
                              + close_matches_hint(key, SPEC_OPTIONS))
        options[key] = value
    return base, options


def resolve_backbone_spec(spec: str) -> str:
    """Expands `{cache}` (the offline asset cache) in a backbone spec; a CheckpointError
    when the file it names is not there."""
    if "{cache}" not in spec:
        return spec
    out = spec.replace("{cache}", assets.cache_dir())
    path = split_spec_options(out)[0].partition(":")[2]
    if path and not os.path.exists(path):
        raise CheckpointError(f"{path} is not in the asset cache; run `ptransfer assets fetch` "
                              "(or set PTRANSFER_CACHE to where the assets are).")
    return out


def family_of_spec(spec) -> str | None:
    """The family name a load_backbone spec would load, without loading the model
    (None when the spec does not say)."""
    if not isinstance(spec, str) or ":" not in spec:
        return None
    kind, _, rest = split_spec_options(spec)[0].partition(":")
    if kind == "gguf":
        try:
            return GGUF_ARCHITECTURES.get(architecture_of(rest.replace("{cache}", assets.cache_dir())))
        except CheckpointError:  # the file is not here: every GGUF family read is decoder-only
            return "llama"
    if kind == "t5x":
        return "t5"
    if kind == "preset":
        return all_presets().get(rest)
    if kind == "hf":
        try:
            with open(os.path.join(rest, "config.json")) as f:
                arch = (json.load(f).get("architectures") or [None])[0]
        except (OSError, ValueError):
            return None
        for fam in FAMILY_MODULES:
            if arch in _family(fam).HF_ARCHITECTURES:
                return fam
    return None


def d_model_of_spec(spec: str) -> int:
    """The width (d_model) of the model a load_backbone spec names, read without its
    weights where the spec says it (preset shapes, t5x's preset, GGUF metadata, HF
    config.json); otherwise the model is loaded. CheckpointError/ConfigError as
    load_backbone."""
    spec = check_backbone_spec(spec)
    kind, _, rest = split_spec_options(spec)[0].partition(":")
    preset = rest.partition(":")[0] if kind == "t5x" else rest if kind == "preset" else None
    if preset is not None:
        presets = all_presets()
        if preset not in presets:
            raise ConfigError(f"unknown preset {preset!r}." + close_matches_hint(preset, presets))
        return int(_family(presets[preset]).PRESETS[preset].d_model)
    width = None
    if kind == "gguf":
        ckpt = GGUFCheckpoint(rest)
        width = ckpt.field(f"{ckpt.architecture}.embedding_length")
    elif kind == "hf":
        with open(os.path.join(rest, "config.json")) as f:  # check_backbone_spec read it
            cfg = json.load(f)
        width = cfg.get("d_model", cfg.get("hidden_size"))  # T5's name, the others'
    if isinstance(width, int) and width > 0:
        return width
    return load_backbone(spec).d_model


def load_backbone(spec: str, *, dtype=None, mesh=None, seed: int = 0,
                  compute_dtype: str | None = None, remat: str | None = None):
    """Returns a `Backbone` for `spec` (see module docstring).

    Args:
      dtype: storage dtype of the frozen params (e.g. jnp.bfloat16); None keeps
        float32.
      mesh: if given, params are placed directly into sharded device arrays.
      seed: random init seed for `preset:` specs.
      compute_dtype: activations / matmul dtype (e.g. 'bfloat16'); None keeps
        the family config's own (float32 for every preset and checkpoint).
      remat: per-layer rematerialization, 'none' | 'full' | 'dots'; None keeps
        the config's own ('none').
    """
    if compute_dtype is not None:
        check_compute_dtype(compute_dtype)
    if remat is not None:
        check_remat(remat, f"backbone {spec!r}")
    backbone = _load(resolve_backbone_spec(spec), dtype=dtype, mesh=mesh, seed=seed)
    return configure_backbone(backbone, compute_dtype=compute_dtype, remat=remat)


def _hf_family(directory: str) -> str:
    """The family of an hf: directory from its config.json, or one error saying what is wrong."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.isdir(directory):
        raise CheckpointError(f"hf: directory {directory!r} does not exist; give the directory "
                              "that holds config.json and model.safetensors.")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"no config.json in {directory!r}: an hf: spec needs a directory "
                              "with config.json and model.safetensors (or a sharded index).")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e}); restore the model's "
                              "original config.json.") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} is not a JSON object; restore the model's "
                              "original config.json.")
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else "?"
    for fam in FAMILY_MODULES:
        if arch in _family(fam).HF_ARCHITECTURES:
            return fam
    known = [a for fam in FAMILY_MODULES for a in _family(fam).HF_ARCHITECTURES]
    raise CheckpointError(f"{config_path}: architecture {arch!r} is not supported; "
                          f"supported: {', '.join(known)}.")


def check_backbone_spec(spec) -> str:
    """The resolved spec, after every check that reads no weights (form, preset name,
    asset file, hf: directory and its config.json), or one ConfigError/CheckpointError."""
    if not isinstance(spec, str):
        raise ConfigError(f"backbone spec {spec!r} must be a string such as 'preset:t5_tiny'.")
    spec = resolve_backbone_spec(spec)
    base, options = split_spec_options(spec)
    kind, sep, rest = base.partition(":")
    if not sep or not rest:
        raise ConfigError(f"backbone spec {spec!r} has no form; use preset:<name>, hf:<dir>, "
                          "t5x:<preset>:<dir> or gguf:<file>.")
    if kind == "preset":
        presets = all_presets()
        if rest not in presets:
            raise ConfigError(f"unknown preset {rest!r}." + close_matches_hint(rest, presets))
    elif kind == "hf":
        _hf_family(rest)
    elif kind == "t5x":
        if not rest.partition(":")[1]:
            raise ConfigError(f"t5x spec {spec!r} needs a preset: t5x:<preset>:<checkpoint_dir>, "
                              "e.g. t5x:t5_1_1_base:/ckpts/checkpoint_1000000.")
    elif kind != "gguf":
        raise ConfigError(f"backbone spec {spec!r}: unknown form {kind!r}; use preset:, hf:, "
                          "t5x: or gguf:.")
    if options:
        family = family_of_spec(base)
        for key in options:
            if family not in SPEC_OPTIONS[key]:
                raise ConfigError(f"backbone spec {spec!r}: option {key!r} applies to "
                                  f"{'/'.join(SPEC_OPTIONS[key])} backbones only, not to this "
                                  f"{family or 'unknown'} one; drop it.")
        if "input_layout" in options:
            _family("mlm").check_input_layout(options["input_layout"])
    return spec


def _load(spec: str, *, dtype, mesh, seed: int):
    base, options = split_spec_options(check_backbone_spec(spec))
    backbone = _load_base(base, dtype=dtype, mesh=mesh, seed=seed)
    if "input_layout" in options:
        backbone = _family("mlm").with_input_layout(backbone, options["input_layout"])
    return backbone


def _load_base(spec: str, *, dtype, mesh, seed: int):
    kind, _, rest = spec.partition(":")
    kw = dict(dtype=dtype, mesh=mesh)
    if kind == "preset":
        return _family(all_presets()[rest]).from_preset(rest, seed=seed, **kw)
    if kind == "hf":
        return _family(_hf_family(rest)).from_hf(rest, **kw)
    if kind == "t5x":
        preset, _, ckpt = rest.partition(":")
        return _family("t5").from_t5x(ckpt, preset, **kw)
    if kind == "gguf":
        arch = architecture_of(rest)
        if arch not in GGUF_ARCHITECTURES:
            raise CheckpointError(f"{rest}: GGUF architecture {arch!r} is not supported; supported: "
                                  f"{', '.join(GGUF_ARCHITECTURES)}.")
        return _family(GGUF_ARCHITECTURES[arch]).from_gguf(rest, **kw)
