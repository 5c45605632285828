"""Gemma 3 checkpoints -> the ptransfer parameter tree: GGUF files and HF directories.

GGUF (llama.cpp's `gemma3` architecture): tensors are [out, in] like HF
Linear weights and are transposed to [in, out] kernels; query / key rows are
NOT permuted (llama.cpp permutes them for LLaMA only); norm weights already
hold 1 + w and are used as stored. The local / global layer pattern (every
6th layer global) and the local RoPE base (10,000) are not in the file: they
are Gemma 3's fixed design, as in transformers' Gemma3TextConfig.

HF (`Gemma3ForCausalLM` safetensors): norm weights are w, so 1 is added.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np

from ptransfer.backbones.gemma3.config import Gemma3Config
from ptransfer.backbones.gemma3.model import abstract_params
from ptransfer.checkpoints.gguf import GGUFCheckpoint
from ptransfer.checkpoints.safetensors_io import SafetensorsCheckpoint
from ptransfer.checkpoints.tree import ParamTreeBuilder
from ptransfer.core.errors import CheckpointError

# (ptransfer path, transpose [out, in] -> [in, out], add 1 to an HF norm weight)
_GGUF_GLOBAL = {
    "token_embd.weight": ("token_embedder/embedding", False),
    "output_norm.weight": ("decoder_norm/scale", False),
}
_GGUF_LAYER = {
    "attn_norm.weight": ("pre_attention_layer_norm/scale", False),
    "attn_q.weight": ("attention/query/kernel", True),
    "attn_k.weight": ("attention/key/kernel", True),
    "attn_v.weight": ("attention/value/kernel", True),
    "attn_q_norm.weight": ("attention/query_norm/scale", False),
    "attn_k_norm.weight": ("attention/key_norm/scale", False),
    "attn_output.weight": ("attention/out/kernel", True),
    "post_attention_norm.weight": ("post_attention_layer_norm/scale", False),
    "ffn_norm.weight": ("pre_mlp_layer_norm/scale", False),
    "ffn_gate.weight": ("mlp/wi_0/kernel", True),
    "ffn_up.weight": ("mlp/wi_1/kernel", True),
    "ffn_down.weight": ("mlp/wo/kernel", True),
    "post_ffw_norm.weight": ("post_mlp_layer_norm/scale", False),
}
_HF_GLOBAL = {
    "model.embed_tokens.weight": ("token_embedder/embedding", False),
    "model.norm.weight": ("decoder_norm/scale", False),
}
_HF_LAYER = {
    "input_layernorm.weight": ("pre_attention_layer_norm/scale", False),
    "self_attn.q_proj.weight": ("attention/query/kernel", True),
    "self_attn.k_proj.weight": ("attention/key/kernel", True),
    "self_attn.v_proj.weight": ("attention/value/kernel", True),
    "self_attn.q_norm.weight": ("attention/query_norm/scale", False),
    "self_attn.k_norm.weight": ("attention/key_norm/scale", False),
    "self_attn.o_proj.weight": ("attention/out/kernel", True),
    "post_attention_layernorm.weight": ("post_attention_layer_norm/scale", False),
    "pre_feedforward_layernorm.weight": ("pre_mlp_layer_norm/scale", False),
    "mlp.gate_proj.weight": ("mlp/wi_0/kernel", True),
    "mlp.up_proj.weight": ("mlp/wi_1/kernel", True),
    "mlp.down_proj.weight": ("mlp/wo/kernel", True),
    "post_feedforward_layernorm.weight": ("post_mlp_layer_norm/scale", False),
}


def _builder(config: Gemma3Config, dtype, mesh, source: str) -> ParamTreeBuilder:
    abstract, axes = abstract_params(config)
    return ParamTreeBuilder(abstract, axes, dtype=dtype, mesh=mesh, source=source)


def _mapped(name: str, global_names: dict, layer_names: dict, prefix: str, sep: int):
    """(path, transpose) of a checkpoint tensor name, or None."""
    if name in global_names:
        return global_names[name]
    parts = name.split(".", sep)
    if len(parts) == sep + 1 and ".".join(parts[:sep - 1]) == prefix and parts[sep] in layer_names:
        sub, transpose = layer_names[parts[sep]]
        return f"layers_{int(parts[sep - 1])}/{sub}", transpose
    return None


# ---- GGUF -------------------------------------------------------------------------

def config_from_gguf(ckpt: GGUFCheckpoint) -> Gemma3Config:
    """The model shape from `gemma3.*` metadata."""
    if ckpt.architecture != "gemma3":
        raise CheckpointError(f"{ckpt.path}: architecture {ckpt.architecture!r} is not gemma3.")
    key = lambda k: f"gemma3.{k}"  # noqa: E731
    d_model = int(ckpt.require(key("embedding_length")))
    heads = int(ckpt.require(key("attention.head_count")))
    head_dim = int(ckpt.field(key("attention.key_length"), 256))
    if int(ckpt.field(key("attention.value_length"), head_dim)) != head_dim:
        raise CheckpointError(f"{ckpt.path}: key and value lengths differ; not a Gemma 3 text model.")
    if ckpt.field(key("rope.scaling.type")) not in (None, "none"):
        raise CheckpointError(f"{ckpt.path}: RoPE scaling {ckpt.field(key('rope.scaling.type'))!r} "
                              "is not supported.")
    for cap in ("final_logit_softcapping", "attn_logit_softcapping"):
        if ckpt.field(key(cap)):
            raise CheckpointError(f"{ckpt.path}: {cap} is set; Gemma 3 has none (a Gemma 2 file?).")
    if "output.weight" in ckpt:
        raise CheckpointError(f"{ckpt.path}: an untied output head; Gemma 3 ties it to the embedding.")
    vocab = ckpt.field(key("vocab_size"))
    if vocab is None:
        vocab = int(ckpt._tensor("token_embd.weight").shape[1])
    bos = ckpt.field("tokenizer.ggml.bos_token_id")
    add_bos = ckpt.field("tokenizer.ggml.add_bos_token", True)
    config = Gemma3Config(
        vocab_size=int(vocab),
        d_model=d_model,
        num_layers=int(ckpt.require(key("block_count"))),
        num_heads=heads,
        num_kv_heads=int(ckpt.field(key("attention.head_count_kv"), heads)),
        head_dim=head_dim,
        d_ff=int(ckpt.require(key("feed_forward_length"))),
        query_pre_attn_scalar=float(head_dim),  # llama.cpp's gemma3 graph scales by key_length ** -0.5
        sliding_window=int(ckpt.field(key("attention.sliding_window"), 512)),
        rope_theta=_f32(ckpt.field(key("rope.freq_base"), 1_000_000.0)),
        norm_eps=_f32(ckpt.field(key("attention.layer_norm_rms_epsilon"), 1e-6)),
        bos_id=int(bos) if bos is not None and add_bos else None,
    )
    return config.validate(ckpt.path)


def _f32(value) -> float:
    """A float32 metadata value as its shortest decimal (1e-06, not 9.99999997e-07)."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def gguf_tensors(ckpt: GGUFCheckpoint) -> Iterator[tuple[str, np.ndarray]]:
    """(ptransfer path, float32 array) for every weight, one at a time; kernels [in, out]."""
    for name in ckpt.keys():
        mapped = _mapped(name, _GGUF_GLOBAL, _GGUF_LAYER, "blk", 2)
        if mapped is None:
            if name == "rope_freqs.weight":
                continue
            raise CheckpointError(f"{ckpt.path}: tensor {name!r} is not part of a Gemma 3 text model.")
        path, transpose = mapped
        w = ckpt.get(name)
        yield path, (np.ascontiguousarray(w.T) if transpose else w)


def params_from_gguf(ckpt: GGUFCheckpoint, config: Gemma3Config, *, dtype=None, mesh=None):
    builder = _builder(config, dtype, mesh, ckpt.path)
    for path, array in gguf_tensors(ckpt):
        builder.put(path, array)
    return builder.build()


# ---- HF ---------------------------------------------------------------------------

def config_from_hf(cfg: dict, where: str = "config.json") -> Gemma3Config:
    """Gemma3Config from a Gemma 3 text config.json (model_type gemma3_text)."""
    try:
        heads = int(cfg["num_attention_heads"])
        if cfg.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            raise _unsupported(where, f"hidden_activation {cfg['hidden_activation']!r} (GeGLU needs "
                                      "gelu_pytorch_tanh)")
        for cap in ("final_logit_softcapping", "attn_logit_softcapping"):
            if cfg.get(cap):
                raise _unsupported(where, f"{cap} {cfg[cap]}")
        if cfg.get("attention_bias") or cfg.get("use_bidirectional_attention"):
            raise _unsupported(where, "attention biases or bidirectional attention")
        if not cfg.get("tie_word_embeddings", True):
            raise _unsupported(where, "an untied head")
        n_layers = int(cfg["num_hidden_layers"])
        pattern = int(cfg.get("sliding_window_pattern") or 6)
        types = cfg.get("layer_types")
        if types is not None:
            globals_ = [i for i, t in enumerate(types) if t == "full_attention"]
            pattern = globals_[0] + 1 if globals_ else n_layers + 1
            expected = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                        for i in range(n_layers)]
            if list(types) != expected:
                raise _unsupported(where, f"layer_types {types} (only a regular pattern of one "
                                          "global layer every N is supported)")
        rope = cfg.get("rope_parameters") or {}
        full, local = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
        for r in (full, local):
            if r.get("rope_type", "default") != "default":
                raise _unsupported(where, f"RoPE scaling {r}")
        if cfg.get("rope_scaling"):
            raise _unsupported(where, f"RoPE scaling {cfg['rope_scaling']}")
        bos = cfg.get("bos_token_id", 2)
        config = Gemma3Config(
            vocab_size=int(cfg["vocab_size"]),
            d_model=int(cfg["hidden_size"]),
            num_layers=n_layers,
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or 256),
            d_ff=int(cfg["intermediate_size"]),
            query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar") or 256),
            sliding_window=int(cfg.get("sliding_window") or 512),
            sliding_window_pattern=pattern,
            rope_theta=float(full.get("rope_theta") or cfg.get("rope_theta") or 1_000_000.0),
            rope_local_theta=float(local.get("rope_theta") or cfg.get("rope_local_base_freq") or 10_000.0),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            bos_id=None if bos is None else int(bos),
        )
    except KeyError as e:
        raise CheckpointError(f"{where}: required field {e.args[0]!r} is missing.") from None
    return config.validate(where)


def _unsupported(where: str, what: str) -> CheckpointError:
    return CheckpointError(f"{where}: {what} is not supported by the gemma3 family.")


def hf_param_path(name: str) -> tuple[str, bool] | None:
    """HF Gemma3ForCausalLM tensor name -> (ptransfer path, transpose); None if not a weight."""
    return _mapped(name, _HF_GLOBAL, _HF_LAYER, "model.layers", 3)


def params_from_hf(directory: str, *, dtype=None, mesh=None):
    """(config, params) of an HF Gemma3ForCausalLM directory (config.json + safetensors)."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"no config.json in {directory!r}.")
    with open(config_path) as f:
        cfg = json.load(f)
    config = config_from_hf(cfg.get("text_config") or cfg, config_path)
    ckpt = SafetensorsCheckpoint(directory)
    builder = _builder(config, dtype, mesh, directory)
    for name in ckpt.keys():
        if name == "lm_head.weight":
            continue  # tied: a checkpoint may still store the (identical) head
        mapped = hf_param_path(name)
        if mapped is None:
            raise CheckpointError(f"{directory}: tensor {name!r} is not part of a Gemma 3 text model "
                                  "(vision tower, adapters?); ptransfer reads Gemma3ForCausalLM weights.")
        path, transpose = mapped
        w = ckpt.get(name)
        if path.endswith("/scale"):
            w = w.astype(np.float32) + 1.0  # HF multiplies by (1 + w)
        builder.put(path, w.T if transpose else w)
    return config, builder.build()
