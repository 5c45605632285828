"""GGUF files (llama.cpp's format): metadata, dequantized tensors, LLaMA names.

`architecture_of(path)` reads only the header up to `general.architecture`,
so a loader can pick the model family without parsing the whole file.

The file is memory-mapped by `gguf.GGUFReader`; tensors are dequantized one
at a time to float32 with the `gguf` package's numpy kernels, so loading holds
one dequantized tensor beyond what the caller keeps.

Orientation: a GGUF tensor of dims (ne0, ne1) = (in, out) is a row-major
[out, in] matrix, the same layout as an HF `nn.Linear.weight`; `get` returns
it that way.

llama.cpp's converter permutes the rows of the query and key projections so
its RoPE can rotate interleaved pairs (x0, x1), (x2, x3), ... where HF LLaMA
rotates halves (x_i, x_{i + Dh/2}). `llama_tensors` undoes that permutation,
so the result equals the HF checkpoint the file was converted from and runs
through the same (HF-convention) RoPE as every other LLaMA checkpoint.
"""

from __future__ import annotations

import os
import struct
from typing import Iterator

import numpy as np

from ptransfer.core.errors import CheckpointError

# Types dequantized by gguf.quants (numpy). The first group has gguf quantizers
# too and is covered by ptransfer's round-trip test; K-quants are dequantized by
# the same package (llama.cpp's reference layout); Q4_K and Q6_K are checked
# against transformers' own dequantization of the Gemma 3 file.
TESTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
SUPPORTED_TYPES = TESTED_TYPES + ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# llama.cpp tensor name -> (ptransfer path, transpose [out, in] -> [in, out] kernel)
_GLOBAL_NAMES = {
    "token_embd.weight": ("token_embedder/embedding", False),
    "output_norm.weight": ("decoder_norm/scale", False),
    "output.weight": ("logits_dense/kernel", True),
}
_LAYER_NAMES = {
    "attn_norm.weight": ("pre_attention_layer_norm/scale", False),
    "attn_q.weight": ("attention/query/kernel", True),
    "attn_k.weight": ("attention/key/kernel", True),
    "attn_v.weight": ("attention/value/kernel", True),
    "attn_output.weight": ("attention/out/kernel", True),
    "ffn_norm.weight": ("pre_mlp_layer_norm/scale", False),
    "ffn_gate.weight": ("mlp/wi_0/kernel", True),
    "ffn_up.weight": ("mlp/wi_1/kernel", True),
    "ffn_down.weight": ("mlp/wo/kernel", True),
}


class GGUFCheckpoint:
    """A GGUF file opened for reading.

    Raises CheckpointError if the file is missing, is not GGUF, or holds a
    tensor type that cannot be dequantized (checked up front, before any
    weight is read).
    """

    def __init__(self, path: str):
        import gguf

        self.path = path
        if not os.path.isfile(path):
            raise CheckpointError(f"GGUF file {path!r} does not exist. For the SmolLM2 demo model "
                                  "run `ptransfer assets fetch` first.")
        try:
            self._reader = gguf.GGUFReader(path)
        except Exception as e:  # gguf raises ValueError/struct.error/OSError on bad files
            raise CheckpointError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}).") from None
        self._tensors = {t.name: t for t in self._reader.tensors}
        bad = [(t.name, t.tensor_type.name) for t in self._reader.tensors
               if t.tensor_type.name not in SUPPORTED_TYPES]
        if bad:
            name, kind = bad[0]
            more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
            raise CheckpointError(
                f"{path}: tensor {name!r} has GGML type {kind}{more}, which ptransfer cannot "
                f"dequantize (supported: {', '.join(SUPPORTED_TYPES)}). Re-quantize the model with "
                "llama.cpp (`llama-quantize ... Q8_0`) or load its HF safetensors with hf:<dir>.")

    # ---- metadata -------------------------------------------------------------

    def field(self, key: str, default=None):
        """A metadata value as plain Python (str, int, float, bool or list)."""
        f = self._reader.fields.get(key)
        return default if f is None else f.contents()

    def require(self, key: str):
        value = self.field(key)
        if value is None:
            raise CheckpointError(f"{self.path}: metadata key {key!r} is missing; the file is not a "
                                  "complete llama.cpp model.")
        return value

    def tokenizer_metadata(self) -> dict:
        """All `tokenizer.ggml.*` fields (for `vocab.TokenizersVocabulary`)."""
        return {k: self.field(k) for k in self._reader.fields if k.startswith("tokenizer.ggml.")}

    @property
    def architecture(self) -> str:
        return str(self.field("general.architecture", "?"))

    # ---- tensors ---------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def tensor_type(self, name: str) -> str:
        return self._tensor(name).tensor_type.name

    def _tensor(self, name: str):
        if name not in self._tensors:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing; is it a complete "
                                  f"{self.architecture} model?")
        return self._tensors[name]

    def get(self, name: str) -> np.ndarray:
        """Tensor `name` dequantized to float32, row-major [out, in] (1-D stays 1-D).

        Quantized tensors are dequantized in blocks of rows into one float32
        array, so the numpy kernels' temporaries stay a few MB even for a
        262,144-row embedding.
        """
        from gguf import quants

        t = self._tensor(name)
        shape = tuple(int(d) for d in reversed(t.shape))
        data = np.asarray(t.data)
        if data.ndim != 2 or data.shape[0] <= _ROWS_PER_BLOCK:
            array = quants.dequantize(data, t.tensor_type)
            return np.asarray(array, np.float32).reshape(shape)
        out = np.empty((data.shape[0], int(np.prod(shape)) // data.shape[0]), np.float32)
        for start in range(0, data.shape[0], _ROWS_PER_BLOCK):
            stop = min(start + _ROWS_PER_BLOCK, data.shape[0])
            out[start:stop] = quants.dequantize(data[start:stop], t.tensor_type)
        return out.reshape(shape)


_ROWS_PER_BLOCK = 4096


# GGUF metadata value types -> struct format of a scalar (8 = string, 9 = array).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def architecture_of(path: str) -> str:
    """`general.architecture` of a GGUF file, read from its header only.

    Raises CheckpointError if the file is missing, is not GGUF or has no
    such key.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"GGUF file {path!r} does not exist. For the demo models run "
                              "`ptransfer assets fetch` first.")
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError("no GGUF magic")
            version, _, kv_count = struct.unpack("<IQQ", f.read(20))
            if version < 2:
                raise ValueError(f"GGUF version {version} is too old")
            for _ in range(kv_count):
                key = _read_string(f)
                kind = struct.unpack("<I", f.read(4))[0]
                if key == "general.architecture" and kind == 8:
                    return _read_string(f)
                _skip_value(f, kind)
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable GGUF file ({e}).") from None
    raise CheckpointError(f"{path}: metadata key 'general.architecture' is missing; the file is not "
                          "a complete llama.cpp model.")


def _read_string(f) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8")


def _skip_value(f, kind: int) -> None:
    if kind in _SCALARS:
        f.seek(struct.calcsize("<" + _SCALARS[kind]), 1)
    elif kind == 8:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(n, 1)
    elif kind == 9:
        item, count = struct.unpack("<IQ", f.read(12))
        if item in _SCALARS:
            f.seek(count * struct.calcsize("<" + _SCALARS[item]), 1)
        else:
            for _ in range(count):
                _skip_value(f, item)
    else:
        raise ValueError(f"unknown metadata value type {kind}")


def unpermute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverts llama.cpp's query/key row permutation. [H*Dh, in] -> [H*Dh, in].

    Within each head, llama.cpp stores the rows of HF's two halves interleaved
    (row 2i = HF row i, row 2i+1 = HF row i + Dh/2); this puts them back.
    """
    rows = w.shape[0]
    half = rows // num_heads // 2
    return w.reshape(num_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_hparams(ckpt: GGUFCheckpoint) -> dict:
    """The model shape from `llama.*` metadata, with HF config.json names."""
    arch = ckpt.architecture
    if arch != "llama":
        raise CheckpointError(f"{ckpt.path}: architecture {arch!r} is not supported; ptransfer reads "
                              "GGUF files of the 'llama' architecture (LLaMA, SmolLM, Mistral-style).")
    d_model = int(ckpt.require("llama.embedding_length"))
    heads = int(ckpt.require("llama.attention.head_count"))
    kv_heads = int(ckpt.field("llama.attention.head_count_kv", heads))
    head_dim = int(ckpt.field("llama.attention.key_length", d_model // heads))
    rope_dim = int(ckpt.field("llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise CheckpointError(f"{ckpt.path}: partial rotary embeddings (rope dims {rope_dim} of "
                              f"head dim {head_dim}) are not supported.")
    if ckpt.field("llama.rope.scaling.type") not in (None, "none"):
        raise CheckpointError(f"{ckpt.path}: RoPE scaling "
                              f"{ckpt.field('llama.rope.scaling.type')!r} is not supported.")
    if ckpt.field("llama.expert_count"):
        raise CheckpointError(f"{ckpt.path}: mixture-of-experts LLaMA files are not supported.")
    vocab = ckpt.field("llama.vocab_size")
    if vocab is None:  # older files: the embedding's row count, dims are (d_model, vocab)
        vocab = int(ckpt._tensor("token_embd.weight").shape[1])
    return {
        "vocab_size": int(vocab),
        "hidden_size": d_model,
        "num_hidden_layers": int(ckpt.require("llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate_size": int(ckpt.require("llama.feed_forward_length")),
        "rope_theta": float(ckpt.field("llama.rope.freq_base", 10000.0)),
        "rms_norm_eps": float(ckpt.field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "tie_word_embeddings": "output.weight" not in ckpt,
    }


def llama_tensors(ckpt: GGUFCheckpoint, hparams: dict) -> Iterator[tuple[str, np.ndarray]]:
    """(ptransfer path, float32 array) for every weight, one at a time.

    Kernels come out [in, out] (T5X layout); query/key rows are un-permuted.
    Tensors the model does not use (e.g. `rope_freqs.weight`) are skipped.
    """
    heads, kv_heads = hparams["num_attention_heads"], hparams["num_key_value_heads"]
    for name in ckpt.keys():
        if name in _GLOBAL_NAMES:
            path, transpose = _GLOBAL_NAMES[name]
            if path.startswith("logits_dense") and hparams["tie_word_embeddings"]:
                continue
        elif name.startswith("blk."):
            _, layer, rest = name.split(".", 2)
            if rest not in _LAYER_NAMES:
                continue
            sub, transpose = _LAYER_NAMES[rest]
            path = f"layers_{int(layer)}/{sub}"
        else:
            continue
        w = ckpt.get(name)
        if name.endswith("attn_q.weight"):
            w = unpermute_rope_rows(w, heads)
        elif name.endswith("attn_k.weight"):
            w = unpermute_rope_rows(w, kv_heads)
        yield path, (np.ascontiguousarray(w.T) if transpose else w)
