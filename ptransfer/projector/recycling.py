"""Training-free baselines for moving a prompt to another backbone.

* Linear prompt recycling (the "linear" recycler of Lester et al., 2022,
  "Reducing Retraining by Recycling Parameter-Efficient Prompts"): fit
  W [d_src, d_tgt] by least squares so that E_src[a] @ W ~= E_tgt[b] over
  aligned token pairs (a, b) of the two input-embedding tables, then map every
  prompt token: P_tgt = P_src @ W. No bias term (the two tables' means are
  part of the fit through the shared tokens).

Token alignment (`token_alignment`):
  * the same vocabulary (seqio equality: same class and same model) -> the
    identical ids 0 .. V-1 of the real vocabulary;
  * different tokenizers -> ids whose token texts are equal (`token_text`):
    a byte-level BPE piece is byte-decoded (so `Ġ` reads as a space, `Ċ` as a
    newline), a SentencePiece-style piece has `▁` read as a space (decoding it
    alone would drop a word's leading space, and "▁the" would meet the
    word-internal "the" instead of BPE's "Ġthe"), byte-fallback pieces
    `<0xNN>` of ASCII bytes become that character. Special and control tokens
    and partial-UTF-8 pieces are dropped, and a text that several ids share
    keeps its lowest id.
  Only ids below the vocabulary's real size are used (embedding tables may be
  padded beyond it).
"""

from __future__ import annotations

import numpy as np
import seqio
import tokenizers

from ptransfer.core.errors import ConfigError


def _real_size(vocab, table_rows: int) -> int:
    return min(int(vocab.vocab_size), int(table_rows))


def _same_vocab(a, b) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # a vocabulary without a usable __eq__
        return a is b


SPACE_MARK = "\u2581"  # SentencePiece's word-start marker "▁"


def _byte_piece(piece: str) -> str:
    """'<0x0A>' -> '\n' for an ASCII byte; '' for a byte of a multi-byte character."""
    value = int(piece[3:-1], 16)
    return chr(value) if value < 0x80 else ""


def _sentencepiece_texts(sp, size: int) -> list[str]:
    out = []
    for i in range(size):
        if sp.is_control(i) or sp.is_unknown(i):
            out.append("")
        elif sp.is_byte(i):
            out.append(_byte_piece(sp.id_to_piece(i)))
        else:
            out.append(sp.id_to_piece(i).replace(SPACE_MARK, " "))
    return out


def _tokenizers_texts(tok, size: int) -> list[str]:
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    out = []
    for i in range(size):
        piece = tok.id_to_token(i)
        if i in special or piece is None:
            out.append("")
        elif SPACE_MARK in piece:
            out.append(piece.replace(SPACE_MARK, " "))
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out.append(_byte_piece(piece))
        else:  # byte-level BPE (and word-level) pieces decode alone without loss
            out.append(tok.decode([i], skip_special_tokens=True))
    return out


def token_texts(vocab, size: int) -> list[str]:
    """The text of every id < size as the module docstring reads it ('' = not aligned)."""
    if isinstance(vocab, seqio.SentencePieceVocabulary):
        texts = _sentencepiece_texts(vocab.tokenizer, size)
    elif isinstance(getattr(vocab, "tokenizer", None), tokenizers.Tokenizer):
        texts = _tokenizers_texts(vocab.tokenizer, size)
    else:
        texts = []
        for i in range(size):
            try:
                s = vocab.decode([i])
            except Exception:  # ids a vocabulary cannot decode alone (e.g. control ids)
                s = ""
            texts.append(s.decode("utf-8", errors="ignore") if isinstance(s, bytes) else s)
    return ["" if "\ufffd" in t else t for t in texts]


def decoded_tokens(vocab, size: int) -> dict[str, int]:
    """token text -> lowest id, for ids < size with a non-empty text (`token_texts`)."""
    out: dict[str, int] = {}
    for i, s in enumerate(token_texts(vocab, size)):
        if s and s not in out:
            out[s] = i
    return out


def token_alignment(src_vocab, tgt_vocab, src_rows: int, tgt_rows: int,
                    max_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Aligned id pairs (src_ids [K], tgt_ids [K]) between two vocabularies (module doc).

    `max_tokens` keeps the first K pairs in source-id order (BPE / SentencePiece
    ids roughly follow frequency, so these are the common tokens).
    """
    n_src, n_tgt = _real_size(src_vocab, src_rows), _real_size(tgt_vocab, tgt_rows)
    if _same_vocab(src_vocab, tgt_vocab):
        ids = np.arange(min(n_src, n_tgt))
        src_ids, tgt_ids = ids, ids
    else:
        src_map, tgt_map = decoded_tokens(src_vocab, n_src), decoded_tokens(tgt_vocab, n_tgt)
        shared = sorted(set(src_map) & set(tgt_map), key=lambda s: src_map[s])
        src_ids = np.asarray([src_map[s] for s in shared], np.int64)
        tgt_ids = np.asarray([tgt_map[s] for s in shared], np.int64)
    if max_tokens is not None:
        src_ids, tgt_ids = src_ids[:max_tokens], tgt_ids[:max_tokens]
    return src_ids, tgt_ids


def fit_linear_map(src_emb, tgt_emb, rcond: float = 1e-10) -> np.ndarray:
    """argmin_W ||src_emb @ W - tgt_emb||_F, the minimum-norm solution.

    src_emb [K, d_src], tgt_emb [K, d_tgt] -> W [d_src, d_tgt] (float64 SVD
    pseudo-inverse; singular values below rcond * s_max are treated as zero).
    """
    x = np.asarray(src_emb, np.float64)
    y = np.asarray(tgt_emb, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ConfigError(f"recycling needs paired embeddings [K, d_src] and [K, d_tgt]; got "
                          f"{x.shape} and {y.shape}.")
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    keep = s > rcond * (s[0] if s.size else 0.0)
    inv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    return (vt.T * inv) @ (u.T @ y)


def recycle_prompt(prompt, w) -> np.ndarray:
    """Per-token linear map: [..., L, d_src] @ [d_src, d_tgt] -> float32 [..., L, d_tgt]."""
    prompt = np.asarray(prompt, np.float64)
    w = np.asarray(w, np.float64)
    if prompt.shape[-1] != w.shape[0]:
        raise ConfigError(f"prompt width {prompt.shape[-1]} does not match the recycler's source "
                          f"width {w.shape[0]}; recycle prompts of the backbone it was fit on.")
    return (prompt @ w).astype(np.float32)


def fit_recycler(source, target, max_tokens: int | None = None) -> np.ndarray:
    """W [d_src, d_tgt] between two Backbones' input embeddings over aligned tokens."""
    src_table = np.asarray(source.embedding_table(source.params), np.float64)
    tgt_table = np.asarray(target.embedding_table(target.params), np.float64)
    src_ids, tgt_ids = token_alignment(source.vocab, target.vocab, len(src_table),
                                       len(tgt_table), max_tokens)
    if len(src_ids) < src_table.shape[1]:
        raise ConfigError(
            f"only {len(src_ids)} tokens align between {source.name!r} and {target.name!r}, fewer "
            f"than the source width {src_table.shape[1]}; the least-squares map would be "
            "underdetermined. Use backbones whose tokenizers share more tokens.")
    return fit_linear_map(src_table[src_ids], tgt_table[tgt_ids])
