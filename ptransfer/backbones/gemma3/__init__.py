"""Gemma 3 text models (Google's Gemma 3 270M and the same architecture).

  config.py   Gemma3Config and PRESETS (gemma3_tiny for tests, gemma3_270m)
  model.py    the Flax network, its forward functions and Gemma3Backbone
  convert.py  GGUF files and HF Gemma3ForCausalLM directories -> params

The vocabulary of a GGUF file is built from its metadata
(`ptransfer.core.vocab.TokenizersVocabulary.from_gguf_metadata`).
"""

from __future__ import annotations

import logging
import os

import seqio

from ptransfer.backbones.gemma3 import convert
from ptransfer.backbones.gemma3.config import PRESETS, Gemma3Config
from ptransfer.backbones.gemma3.model import Gemma3Backbone, abstract_params, init_params
from ptransfer.checkpoints.gguf import GGUFCheckpoint
from ptransfer.core.errors import ConfigError, close_matches_hint
from ptransfer.core.sharding import shard_params
from ptransfer.core.vocab import TokenizersVocabulary

__all__ = ["PRESETS", "HF_ARCHITECTURES", "Gemma3Config", "Gemma3Backbone", "abstract_params",
           "from_preset", "from_gguf", "from_hf"]

log = logging.getLogger(__name__)

HF_ARCHITECTURES = ("Gemma3ForCausalLM",)


def _byte_vocab(config: Gemma3Config, where: str):
    vocab = seqio.ByteVocabulary()
    if vocab.vocab_size > config.vocab_size:
        raise ConfigError(f"{where}: no tokenizer, and the byte fallback needs vocab_size >= "
                          f"{vocab.vocab_size} (model has {config.vocab_size}); add tokenizer.json.")
    return vocab


def from_preset(name: str, *, seed: int = 0, dtype=None, mesh=None) -> Gemma3Backbone:
    """Random init of a named shape (tests, benchmarks), with seqio.ByteVocabulary."""
    if name not in PRESETS:
        raise ConfigError(f"unknown gemma3 preset {name!r}." + close_matches_hint(name, PRESETS))
    config = PRESETS[name].validate(name)
    params = init_params(config, seed)
    if dtype is not None:
        params = _cast(params, dtype)
    backbone = Gemma3Backbone(name=name, config=config, params=params,
                              vocab=_byte_vocab(config, f"preset {name}"))
    if mesh is not None:
        backbone.params = shard_params(params, backbone.logical_axes(), mesh)
    return backbone


def _cast(tree, dtype):
    if isinstance(tree, dict):
        return {k: _cast(v, dtype) for k, v in tree.items()}
    return tree.astype(dtype)


def from_gguf(path: str, *, dtype=None, mesh=None) -> Gemma3Backbone:
    """A llama.cpp `gemma3` GGUF file: weights dequantized to float32, then cast to `dtype`;
    the vocabulary from its metadata."""
    ckpt = GGUFCheckpoint(path)
    config = convert.config_from_gguf(ckpt)
    params = convert.params_from_gguf(ckpt, config, dtype=dtype, mesh=mesh)
    vocab = TokenizersVocabulary.from_gguf_metadata(ckpt.tokenizer_metadata(), name=path)
    name = os.path.basename(path)
    name = name[: -len(".gguf")] if name.endswith(".gguf") else name
    return Gemma3Backbone(name=name, config=config, params=params, vocab=vocab)


def from_hf(directory: str, *, dtype=None, mesh=None) -> Gemma3Backbone:
    """An HF Gemma3ForCausalLM directory: config.json + safetensors (+ tokenizer.json)."""
    config, params = convert.params_from_hf(directory, dtype=dtype, mesh=mesh)
    if os.path.isfile(os.path.join(directory, "tokenizer.json")):
        vocab = TokenizersVocabulary.from_hf_dir(directory)
    else:
        log.warning("%s has no tokenizer.json; using seqio.ByteVocabulary.", directory)
        vocab = _byte_vocab(config, directory)
    return Gemma3Backbone(name=os.path.basename(os.path.normpath(directory)), config=config,
                          params=params, vocab=vocab)
