"""`seqio.Vocabulary` wrappers for HF `tokenizers` tokenizers.

seqio tasks, feature converters and metrics only see a `seqio.Vocabulary`, so
every backbone family exposes one: T5 a SentencePieceVocabulary, decoder-only
models a `TokenizersVocabulary` built from an HF `tokenizer.json` or from the
tokenizer stored in a GGUF file's metadata (byte-level BPE with merges, or a
SentencePiece-style BPE vocabulary of pieces, scores and token types).

seqio conventions kept here: `encode` adds neither BOS nor EOS (tasks append
EOS themselves where they want it), id 0 is padding (`decode` drops trailing
zeros), and `decode` stops at the first EOS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from ptransfer.core.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# GGUF token types (llama.cpp's llama_token_type).
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
SPACE = "\u2581"  # SentencePiece's visible space

# llama.cpp pre-tokenizer names whose split is "each digit alone, then GPT-2's
# regex" (llama.cpp's STARCODER group; SmolLM2's own tokenizer.json is
# Digits(individual_digits) + ByteLevel).
_DIGITS_THEN_GPT2 = frozenset({"smollm", "starcoder", "refact", "command-r", "codeshell",
                               "exaone", "minerva"})
_GPT2 = frozenset({"default", "gpt2", "gpt-2", ""})
_LLAMA3 = frozenset({"llama-bpe", "llama3", "llama-v3", "smaug-bpe", "dbrx", "falcon3"})
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


class TokenizersVocabulary(seqio.Vocabulary):
    """A `tokenizers.Tokenizer` as a seqio vocabulary.

    Args:
      tokenizer: the tokenizer; its own post-processor is not used (no
        special tokens are added by `encode`).
      eos_id, bos_id, unk_id: the model's special ids (None where absent).
      name: shown in `repr` (e.g. the file it came from).
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, eos_id: int | None,
                 bos_id: int | None = None, unk_id: int | None = None, name: str = ""):
        super().__init__(extra_ids=0)
        self._tokenizer = tokenizer
        self._eos_id = eos_id
        self._bos_id = bos_id
        self._unk_id = unk_id
        self._name = name
        self._fingerprint: str | None = None

    # ---- construction -------------------------------------------------------

    @classmethod
    def from_hf_dir(cls, directory: str) -> "TokenizersVocabulary":
        """From `tokenizer.json`; special ids from config.json / tokenizer_config.json."""
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.isfile(path):
            raise CheckpointError(f"no tokenizer.json in {directory}; save the tokenizer with "
                                  "`tokenizer.save_pretrained(dir)` (a fast tokenizer).")
        try:
            tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise CheckpointError(f"{path} is not a readable tokenizers file: {e}") from None
        ids = _special_ids_from_hf_configs(directory, tok)
        return cls(tok, name=path, **ids)

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, object], name: str = "") -> "TokenizersVocabulary":
        """From a GGUF file's `tokenizer.ggml.*` metadata (plain Python values).

        Byte-level BPE (`tokenizer.ggml.model == "gpt2"`: LLaMA-3, SmolLM,
        Qwen-style files) and SentencePiece-style BPE (`"llama"`: Gemma,
        LLaMA-2-style files).
        """
        model = meta.get("tokenizer.ggml.model")
        if model == "llama":
            tok = gguf_sentencepiece_tokenizer(meta, name=name)
        else:
            tok = gguf_bpe_tokenizer(meta, name=name)
        get = lambda k: None if meta.get(k) is None else int(meta[k])  # noqa: E731
        return cls(tok, eos_id=get("tokenizer.ggml.eos_token_id"),
                   bos_id=get("tokenizer.ggml.bos_token_id"),
                   unk_id=get("tokenizer.ggml.unknown_token_id"), name=name)

    # ---- seqio.Vocabulary -----------------------------------------------------

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        return self._tokenizer

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def unk_id(self) -> int | None:
        return self._unk_id

    @property
    def _base_vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, s: str) -> Sequence[int]:
        return self._tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        while ids and ids[-1] == self.pad_id:  # seqio pads with 0 at the end
            ids.pop()
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """Scalar string -> int32 [L]; string [N] -> int32 RaggedTensor [N, None]."""
        s = tf.convert_to_tensor(s, tf.string)
        if s.shape.rank == 0:
            ids = tf.numpy_function(self._encode_np, [s], tf.int32, stateful=False)
            ids.set_shape([None])
            return ids
        if s.shape.rank == 1:
            values, lengths = tf.numpy_function(self._encode_batch_np, [s], [tf.int32, tf.int64],
                                                stateful=False)
            values.set_shape([None])
            lengths.set_shape([None])
            return tf.RaggedTensor.from_row_lengths(values, lengths)
        raise ValueError(f"encode_tf takes a scalar or 1-D string tensor, got rank {s.shape.rank}.")

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """int [..., L] -> string [...]."""
        ids = tf.convert_to_tensor(ids)
        out = tf.numpy_function(self._decode_np, [ids], tf.string, stateful=False)
        if ids.shape.rank is not None:
            out.set_shape(ids.shape[:-1])
        return out

    # ---- numpy helpers for tf.numpy_function ----------------------------------

    def _encode_np(self, s: bytes) -> np.ndarray:
        return np.asarray(self._encode(s.decode("utf-8")), np.int32)

    def _encode_batch_np(self, strings: np.ndarray):
        encs = self._tokenizer.encode_batch([x.decode("utf-8") for x in strings],
                                            add_special_tokens=False)
        lengths = np.asarray([len(e.ids) for e in encs], np.int64)
        values = np.asarray([i for e in encs for i in e.ids], np.int32)
        return values, lengths

    def _decode_np(self, ids: np.ndarray) -> np.ndarray:
        flat = ids.reshape(-1, ids.shape[-1])
        texts = [self._decode(row).encode("utf-8") for row in flat]
        return np.asarray(texts, dtype=object).reshape(ids.shape[:-1])

    # ---- identity -------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256(self._tokenizer.to_str().encode("utf-8"))
            h.update(repr((self._eos_id, self._bos_id, self._unk_id)).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __eq__(self, other) -> bool:
        return isinstance(other, TokenizersVocabulary) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return (f"TokenizersVocabulary({self._name or 'in-memory'}, size={self.vocab_size}, "
                f"eos={self._eos_id}, bos={self._bos_id})")


def gguf_bpe_tokenizer(meta: Mapping[str, object], name: str = "") -> tokenizers.Tokenizer:
    """Byte-level BPE tokenizer from `tokenizer.ggml.{model,pre,tokens,merges,token_type}`."""
    where = name or "GGUF file"
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise CheckpointError(
            f"{where}: tokenizer type {model!r} is not supported (byte-level BPE 'gpt2' or "
            "SentencePiece-style 'llama'). "
            "Load the model from an HF directory with tokenizer.json instead (hf:<dir>).")
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    merges = list(meta.get("tokenizer.ggml.merges") or [])
    if not tokens or not merges:
        raise CheckpointError(f"{where}: tokenizer.ggml.tokens / merges are missing; the file "
                              "carries no usable tokenizer.")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    tok.pre_tokenizer = _pre_tokenizer(str(meta.get("tokenizer.ggml.pre") or "default"), where)
    tok.decoder = decoders.ByteLevel()
    types = list(meta.get("tokenizer.ggml.token_type") or [])
    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_CONTROL]
    user = [AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_USER_DEFINED]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise CheckpointError(f"{where}: the tokenizer metadata is inconsistent (special tokens "
                              "outside tokenizer.ggml.tokens).")
    return tok


def gguf_sentencepiece_tokenizer(meta: Mapping[str, object], name: str = "") -> tokenizers.Tokenizer:
    """SentencePiece-style BPE from `tokenizer.ggml.{tokens,scores,token_type}` (model 'llama').

    Spaces become "\u2581" (no space is prepended unless
    `tokenizer.ggml.add_space_prefix`); text no piece covers falls back to the
    `<0xNN>` byte pieces; control pieces are special tokens and user-defined
    ones (Gemma's newline runs, HTML tags) are matched whole.

    The file stores no merges, so they are derived: every split of a piece
    into two pieces is a merge, ranked by the merged piece's position in the
    file (ties: the longer left part first). For normal pieces the file
    order is the score order (SentencePiece's own merge priority); llama.cpp
    writes user-defined pieces with score -1000 but they are merged first,
    as the file order says. Runs of spaces, stored as spaces, are read as
    runs of "\u2581" (the spelling the normalized text has).
    """
    where = name or "GGUF file"
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    types = list(meta.get("tokenizer.ggml.token_type") or [])
    if not tokens or len(types) != len(tokens):
        raise CheckpointError(f"{where}: tokenizer.ggml.tokens / token_type are missing or of "
                              "different lengths; the file carries no usable tokenizer.")
    pieces = [SPACE * len(t) if t and not t.strip(" ") else t for t in tokens]
    vocab = {}
    for i, piece in enumerate(pieces):
        vocab.setdefault(piece, i)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = pieces[int(unk_id)] if unk_id is not None else None
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=_merges_from_pieces(pieces, vocab),
                                          unk_token=unk, fuse_unk=True, byte_fallback=True))
    norm = [normalizers.Replace(" ", SPACE)]
    if meta.get("tokenizer.ggml.add_space_prefix"):
        norm.insert(0, normalizers.Prepend(SPACE))
    tok.normalizer = normalizers.Sequence(norm)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(pieces, types) if ty == TOKEN_TYPE_CONTROL]
    user = [AddedToken(t, special=False, normalized=False)
            for t, raw, ty in zip(pieces, tokens, types) if ty == TOKEN_TYPE_USER_DEFINED and t == raw]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise CheckpointError(f"{where}: the tokenizer metadata is inconsistent (repeated pieces).")
    return tok


def _merges_from_pieces(pieces: Sequence[str], vocab: Mapping[str, int]) -> list[tuple[str, str]]:
    """(left, right) for every piece = left + right with both halves pieces, in file order."""
    merges = []
    for piece in pieces:
        merges.extend((piece[:k], piece[k:]) for k in range(len(piece) - 1, 0, -1)
                      if piece[:k] in vocab and piece[k:] in vocab)
    return merges


def _pre_tokenizer(pre: str, where: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in _LLAMA3:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if pre not in _GPT2:
        log.warning("%s: pre-tokenizer %r is not known to ptransfer; splitting text with GPT-2's "
                    "regex, which may tokenize some strings differently from llama.cpp.", where, pre)
    return byte_level


def _special_ids_from_hf_configs(directory: str, tok: tokenizers.Tokenizer) -> dict:
    """eos/bos/unk ids from config.json (ids) or tokenizer_config.json (token strings)."""
    out = {"eos_id": None, "bos_id": None, "unk_id": None}
    for fname, kind in (("config.json", "id"), ("tokenizer_config.json", "token")):
        path = os.path.join(directory, fname)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            cfg = json.load(f)
        for key in ("eos", "bos", "unk"):
            if out[f"{key}_id"] is not None:
                continue
            if kind == "id":
                value = cfg.get(f"{key}_token_id")
                if isinstance(value, list):
                    value = value[0] if value else None
            else:
                token = cfg.get(f"{key}_token")
                if isinstance(token, dict):
                    token = token.get("content")
                value = tok.token_to_id(token) if isinstance(token, str) else None
            out[f"{key}_id"] = None if value is None else int(value)
    return out


_MLM_REASON = ("a masked-LM backbone scores one token at the mask slot. Choose a single-token "
               "label word for this task's MLM verbalizer (RoBERTa words usually need a leading "
               "space, e.g. ' positive').")


def check_single_token_label_words(vocab, words, task_name: str, *,
                                   reason: str = _MLM_REASON) -> list[int]:
    """The token id of every label word; ConfigError naming the first word that
    is not exactly one token of `vocab` (a seqio.Vocabulary), with its pieces.

    `reason`: why one token is needed and what to do (the message's end)."""
    ids = []
    unk = getattr(vocab, "unk_id", None)
    for word in words:
        tokens = list(vocab.encode(word))
        if len(tokens) == 1 and unk is not None and tokens[0] == unk:
            raise ConfigError(
                f"task {task_name!r}: label word {word!r} is not in this vocabulary (it encodes to "
                "the unknown token). Choose a label word the backbone's tokenizer knows.")
        if len(tokens) != 1:
            pieces = [vocab.decode([t]) for t in tokens]
            raise ConfigError(
                f"task {task_name!r}: label word {word!r} is {len(tokens)} tokens {pieces} in this "
                f"vocabulary, but {reason}")
        ids.append(int(tokens[0]))
    return ids
