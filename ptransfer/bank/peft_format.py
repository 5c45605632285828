"""Prompts in HF PEFT's prompt-tuning format, both ways.

A PEFT prompt-tuning adapter directory (what `PeftModel.save_pretrained`
writes and `PeftModel.from_pretrained` reads, peft 0.21) holds:

  adapter_model.safetensors  one tensor "prompt_embeddings"
                             [num_virtual_tokens * num_transformer_submodules, token_dim]
  adapter_config.json        PromptTuningConfig fields: peft_type "PROMPT_TUNING",
                             task_type, num_virtual_tokens, token_dim,
                             num_transformer_submodules, num_attention_heads,
                             num_layers, prompt_tuning_init, base_model_name_or_path,
                             inference_mode, ...

PEFT defaults num_transformer_submodules to 2 for SEQ_2_SEQ_LM and 1
otherwise. With 2, its prompt-tuning forward prepends only rows
[:num_virtual_tokens] to the encoder input; the other rows are never read.
Export therefore writes the prompt in rows [:L] and zeros after it; import
takes rows [:num_virtual_tokens]. Only safetensors is read; a pickled
adapter_model.bin is refused.

Export also writes a README.md model card (PEFT's YAML front matter:
`library_name: peft`, `base_model`), every file mode 0644. `backbone_facts`
reads num_layers / num_attention_heads / the HF base model from a backbone
spec without loading weights, and the GGUF weight types: a prompt trained on
a quantized GGUF model (Q4_1, Q4_K, ...) was fitted to rounded weights, so
its export for the full-precision model is flagged (logged and in the card).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from ptransfer import backbones
from ptransfer.checkpoints import gguf as gguf_ckpt
from ptransfer.core import fileio
from ptransfer.core.errors import CheckpointError, ConfigError

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
PICKLE_FILE = "adapter_model.bin"
CARD_FILE = "README.md"
FILE_MODE = 0o644
# GGUF weight types that are not quantized.
_FULL_PRECISION_GGML = {"F32", "F16", "BF16", "F64"}

log = logging.getLogger(__name__)
PROMPT_KEY = "prompt_embeddings"
PEFT_TYPE = "PROMPT_TUNING"
TASK_TYPES = ("SEQ_2_SEQ_LM", "CAUSAL_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS",
              "FEATURE_EXTRACTION")
# Backbone family -> the PEFT task type its prompts are used with.
FAMILY_TASK_TYPES = {"t5": "SEQ_2_SEQ_LM", "llama": "CAUSAL_LM", "gemma3": "CAUSAL_LM"}
# The peft release whose format this mirrors (written as peft_version).
PEFT_VERSION = "0.21.2"


def peft_config(num_virtual_tokens: int, token_dim: int, task_type: str, *,
                base_model_name_or_path: str | None = None, num_layers: int | None = None,
                num_attention_heads: int | None = None,
                num_transformer_submodules: int | None = None,
                prompt_tuning_init: str = "RANDOM") -> dict:
    """The adapter_config.json dict PEFT's PromptTuningConfig reads."""
    if task_type not in TASK_TYPES:
        raise ConfigError(f"unknown PEFT task_type {task_type!r}; use one of {', '.join(TASK_TYPES)}.")
    if num_transformer_submodules is None:
        num_transformer_submodules = 2 if task_type == "SEQ_2_SEQ_LM" else 1
    if num_transformer_submodules not in (1, 2):
        raise ConfigError(f"num_transformer_submodules must be 1 or 2, got {num_transformer_submodules}.")
    return {
        "auto_mapping": None,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "modules_to_save": None,
        "num_attention_heads": num_attention_heads,
        "num_layers": num_layers,
        "num_transformer_submodules": num_transformer_submodules,
        "num_virtual_tokens": int(num_virtual_tokens),
        "peft_type": PEFT_TYPE,
        "peft_version": PEFT_VERSION,
        # Our prompts are trained, not initialized by PEFT; with inference_mode
        # PEFT never re-initializes from this field. TEXT would need a tokenizer.
        "prompt_tuning_init": prompt_tuning_init,
        "prompt_tuning_init_text": None,
        "revision": None,
        "task_type": task_type,
        "token_dim": int(token_dim),
        "tokenizer_kwargs": None,
        "tokenizer_name_or_path": None,
    }


def backbone_facts(spec: str | None) -> dict:
    """What a backbone spec says about the model, read without loading weights:
    {"num_layers", "num_attention_heads", "base_model_name_or_path",
    "quantization"} (each None when unknown; quantization is the GGUF weight
    types that are quantized, e.g. "Q4_1", or None for full precision)."""
    facts = dict(num_layers=None, num_attention_heads=None, base_model_name_or_path=None,
                 quantization=None)
    if not isinstance(spec, str) or ":" not in spec:
        return facts
    spec = backbones.split_spec_options(spec)[0]
    kind, _, rest = spec.partition(":")
    preset = rest.partition(":")[0] if kind == "t5x" else rest if kind == "preset" else None
    if preset is not None:
        fam = backbones.all_presets().get(preset)
        if fam:
            cfg = backbones._family(fam).PRESETS[preset]
            facts.update(num_layers=getattr(cfg, "num_layers", None),
                         num_attention_heads=getattr(cfg, "num_heads", None))
    elif kind == "hf":
        facts["base_model_name_or_path"] = rest  # PEFT reads an HF id or a local directory
        try:
            with open(os.path.join(rest, "config.json")) as f:
                cfg = json.load(f)
        except (OSError, ValueError):
            cfg = {}
        facts.update(num_layers=cfg.get("num_hidden_layers", cfg.get("num_layers")),
                     num_attention_heads=cfg.get("num_attention_heads", cfg.get("num_heads")))
    elif kind == "gguf":
        try:
            ckpt = gguf_ckpt.GGUFCheckpoint(backbones.resolve_backbone_spec(spec).partition(":")[2])
        except CheckpointError as e:  # the model file is gone: export without its facts
            log.warning("cannot read the backbone's GGUF file (%s); the adapter's num_layers, "
                        "num_attention_heads and quantization note are left out.", e)
            return facts
        arch = ckpt.architecture  # the metadata prefix: llama.*, gemma3.*
        facts.update(num_layers=ckpt.field(f"{arch}.block_count"),
                     num_attention_heads=ckpt.field(f"{arch}.attention.head_count"))
        quantized = sorted({ckpt.tensor_type(k) for k in ckpt.keys()} - _FULL_PRECISION_GGML)
        facts["quantization"] = ",".join(quantized) or None
    return facts


def model_card(config: dict, *, source: dict | None = None, quantization: str | None = None) -> str:
    """README.md for an exported adapter: PEFT's front matter, then what it is."""
    source = source or {}
    base = config.get("base_model_name_or_path")
    lines = ["---"] + ([f"base_model: {base}"] if base else []) + [
        "library_name: peft", "tags:", "- prompt-tuning", "- ptransfer", "---", "",
        f"# Soft prompt{(' for ' + source['task']) if source.get('task') else ''}", "",
        f"A PEFT prompt-tuning adapter ({config['num_virtual_tokens']} virtual tokens of width "
        f"{config['token_dim']}, task type {config['task_type']}) exported by ptransfer.", ""]
    for key, label in (("backbone", "Trained on backbone"), ("backbone_spec", "Backbone spec"),
                       ("task", "Task"), ("run", "Run"), ("best_score", "Best validation score")):
        if source.get(key) is not None:
            lines.append(f"- {label}: `{source[key]}`")
    if quantization:
        lines += ["", f"**Warning:** this prompt was trained on quantized weights ({quantization}, "
                  "GGUF). Used with the full-precision model it may score lower than it did in "
                  "training; evaluate it there before relying on it."]
    lines += ["", "Load it with:", "", "```python",
              "from peft import PeftModel",
              f"model = PeftModel.from_pretrained(base_model, {'<this directory>'!r})", "```", ""]
    return "\n".join(lines)


def export_peft(prompt, out_dir: str, task_type: str, *, source: dict | None = None,
                quantization: str | None = None, **config_kw) -> str:
    """Writes prompt [L, D] as a PEFT prompt-tuning adapter into `out_dir`:
    weights, adapter_config.json and a README.md model card, each mode 0644.

    `config_kw` are `peft_config`'s keyword arguments; `source` (bank entry
    meta: backbone, task, run, ...) goes into the card; `quantization` (from
    `backbone_facts`) marks a prompt trained on quantized weights: a warning
    is logged and written into the card. Returns out_dir.
    """
    from safetensors.numpy import save

    arr = np.asarray(prompt)
    try:
        if arr.ndim != 2:
            raise ValueError
        arr = arr.astype(np.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"a prompt to export must be a numeric [L, D] array, got {arr.dtype} "
                          f"{arr.shape}.") from None
    config = peft_config(arr.shape[0], arr.shape[1], task_type, **config_kw)
    rows = np.zeros((arr.shape[0] * config["num_transformer_submodules"], arr.shape[1]), np.float32)
    rows[:arr.shape[0]] = arr
    if quantization:
        log.warning("the prompt exported to %s was trained on quantized weights (%s, GGUF); with the "
                    "full-precision model it may score lower: evaluate it there.", out_dir, quantization)
    os.makedirs(out_dir, exist_ok=True)
    files = {WEIGHTS_FILE: save({PROMPT_KEY: rows}, metadata={"format": "pt"}),
             CONFIG_FILE: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
             CARD_FILE: model_card(config, source=source, quantization=quantization).encode()}
    for name, data in files.items():
        path = os.path.join(out_dir, name)
        fileio.atomic_write(path, data)
        os.chmod(path, FILE_MODE)  # shared adapters: readable by all, whatever the umask
    return out_dir


def read_peft_config(adapter_dir: str) -> dict:
    path = os.path.join(adapter_dir, CONFIG_FILE)
    if not os.path.isdir(adapter_dir):
        raise CheckpointError(f"PEFT adapter directory {adapter_dir!r} does not exist.")
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"no {CONFIG_FILE} in {adapter_dir}: not a PEFT adapter "
                              "directory (save it with PeftModel.save_pretrained).") from None
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object.")
    if config.get("peft_type") != PEFT_TYPE:
        raise CheckpointError(f"{adapter_dir} is a {config.get('peft_type')!r} adapter; only "
                              f"{PEFT_TYPE} adapters hold a soft prompt that can be imported.")
    for key in ("num_virtual_tokens", "token_dim"):
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise CheckpointError(f"{path}: {key} must be a positive integer, got {config.get(key)!r}.")
    return config


def import_peft(adapter_dir: str) -> tuple[np.ndarray, dict]:
    """(prompt float32 [num_virtual_tokens, token_dim], adapter config) of a PEFT adapter."""
    try:
        import ml_dtypes  # noqa: F401  (registers bfloat16 so safetensors can read it)
    except ImportError:  # only bfloat16 adapters need it; jax installs it
        pass
    from safetensors import safe_open

    config = read_peft_config(adapter_dir)
    path = os.path.join(adapter_dir, WEIGHTS_FILE)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(adapter_dir, PICKLE_FILE)):
            raise CheckpointError(
                f"{adapter_dir} holds {PICKLE_FILE}, a PyTorch pickle that ptransfer never loads; "
                "save the adapter again with save_pretrained(..., safe_serialization=True).")
        raise CheckpointError(f"no {WEIGHTS_FILE} in {adapter_dir}.")
    try:
        with safe_open(path, framework="numpy") as f:
            if PROMPT_KEY not in f.keys():
                raise CheckpointError(f"{path} has no {PROMPT_KEY!r} tensor (has: "
                                      f"{', '.join(f.keys())}); is it a prompt-tuning adapter?")
            rows = f.get_tensor(PROMPT_KEY)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    n, d = config["num_virtual_tokens"], config["token_dim"]
    subs = config.get("num_transformer_submodules") or 1
    if rows.ndim != 2 or rows.shape != (n * subs, d):
        raise CheckpointError(
            f"{path}: {PROMPT_KEY} has shape {rows.shape}, but {CONFIG_FILE} says "
            f"[{n} x {subs}, {d}] (num_virtual_tokens x num_transformer_submodules, token_dim).")
    return np.ascontiguousarray(rows[:n], np.float32), config


def task_type_for(meta: dict, task_type: str | None = None) -> str:
    """The PEFT task_type for a bank entry: explicit, else from its backbone family
    (meta 'family', else inferred from meta 'backbone_spec')."""
    if task_type:
        return task_type
    family = meta.get("family") or backbones.family_of_spec(
        meta.get("backbone_spec") or (meta.get("provenance") or {}).get("backbone_spec"))
    if family in FAMILY_TASK_TYPES:
        return FAMILY_TASK_TYPES[family]
    raise ConfigError(f"cannot tell the PEFT task_type of backbone {meta.get('backbone')!r} "
                      f"(family {family!r}); pass --task-type "
                      f"({' or '.join(FAMILY_TASK_TYPES.values())}).")
