"""Label-word BPE vocabularies: where tiny masked-LM presets get single-token label words.

A masked LM scores ONE token at the mask slot, so every MLM label word of a
task must be one token of the backbone's vocabulary. With a real checkpoint
this is RoBERTa's / BERT's own tokenizer (`tokenizer.json`, read by
`ptransfer.core.vocab.TokenizersVocabulary`): " positive" is the single
byte-level BPE token "Ġpositive" there. That is the main path.

A random-init test preset has no tokenizer file, and `seqio.ByteVocabulary`
would spell " positive" as 9 byte tokens. So the tiny presets (`mlm_tiny`,
`bert_tiny`) get a vocabulary built the way RoBERTa's is, only much smaller:
a byte-level BPE (GPT-2 byte alphabet and pre-tokenizer) whose merges spell
out exactly the MLM label words of the built-in tasks (`TINY_LABEL_WORDS`),
and nothing else.
Its ids keep the byte vocabulary's layout:

  0 <pad>, 1 </s> (end), 2 <unk>, 3..258 the bytes 0..255 (a text without
  label words encodes to the same ids as under seqio.ByteVocabulary),
  259 <s> (start), 260 <mask>, 261.. merge tokens (prefixes of label words,
  ending in the whole words), in sorted-word order.

Like RoBERTa's BPE, the merged words are single tokens wherever they occur,
in targets and in input text alike. `label_word_bpe` also builds the
RoBERTa id layout (<s> 0, <pad> 1, </s> 2, <unk> 3, bytes, merges, <mask>
last), which tests save as a `tokenizer.json` to exercise the main path.
"""

from __future__ import annotations

import functools
from typing import Iterable, Sequence

from ptransfer.core.errors import ConfigError
from ptransfer.core.vocab import TokenizersVocabulary

# The tiny presets' special tokens, in id order around the 256 byte tokens.
TINY_BEFORE_BYTES = ("<pad>", "</s>", "<unk>")    # ids 0, 1, 2 (as seqio.ByteVocabulary)
TINY_AFTER_BYTES = ("<s>", "<mask>")              # ids 259, 260


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the byte-level BPE alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def label_word_bpe(words: Iterable[str], *, before_bytes: Sequence[str] = TINY_BEFORE_BYTES,
                   after_bytes: Sequence[str] = TINY_AFTER_BYTES, last: Sequence[str] = ()):
    """A byte-level BPE `tokenizers.Tokenizer` in which each of `words` is one token.

    Ids: `before_bytes` specials, the 256 byte tokens in byte order,
    `after_bytes` specials, one token per merge (every prefix of every word,
    words in sorted order), then the `last` specials. "<mask>" strips the
    space before it, as RoBERTa's does.

    Raises ConfigError for an empty word (a self-check also makes sure every
    word encodes to a single token).
    """
    import tokenizers
    from tokenizers import AddedToken, decoders, models, pre_tokenizers

    words = sorted(set(words))
    if any(not w for w in words):
        raise ConfigError("label words must be non-empty strings.")
    chars = byte_to_unicode()
    vocab: dict[str, int] = {}
    for tok in before_bytes:
        vocab[tok] = len(vocab)
    for b in range(256):
        vocab[chars[b]] = len(vocab)
    for tok in after_bytes:
        vocab[tok] = len(vocab)
    merges = []
    for word in words:
        pieces = [chars[b] for b in word.encode("utf-8")]
        acc = pieces[0]
        for piece in pieces[1:]:
            if acc + piece not in vocab:
                vocab[acc + piece] = len(vocab)
                merges.append((acc, piece))
            acc += piece
    for tok in last:
        vocab[tok] = len(vocab)
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [*before_bytes, *after_bytes, *last]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=t == "<mask>")
                            for t in specials])
    for word in words:
        if len(tok.encode(word, add_special_tokens=False).ids) != 1:  # pragma: no cover
            raise ConfigError(f"label word {word!r} did not become one BPE token.")
    return tok


# The single-token words of the tiny presets: every MLM label word of the built-in
# tasks (`tasks.specs.registered_mlm_label_words()`; a test keeps the two equal), so
# the presets can be prompt-tuned on any of them. Sorted.
TINY_LABEL_WORDS = (" conflict", " negative", " neutral", " no", " positive", " yes",
                    "Description", "Entity", "Expression", "Human", "Location", "Number")


@functools.lru_cache(maxsize=4)
def tiny_vocab(vocab_size: int, words: tuple[str, ...] | None = None):
    """The tiny presets' TokenizersVocabulary (layout in the module docstring).

    Args:
      vocab_size: the preset's embedding rows; the vocabulary must fit in it.
      words: the single-token words (default: `TINY_LABEL_WORDS`).
    """
    words = TINY_LABEL_WORDS if words is None else words
    tok = label_word_bpe(words)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise ConfigError(
            f"the tiny MLM presets' vocabulary has {size} tokens ({len(words)} label words merged "
            f"into byte-level BPE) but the preset has vocab_size {vocab_size}; raise "
            "TINY_VOCAB['vocab_size'] in ptransfer/backbones/mlm.py.")
    ids = {t: tok.token_to_id(t) for t in (*TINY_BEFORE_BYTES, *TINY_AFTER_BYTES)}
    return TokenizersVocabulary(tok, eos_id=ids["</s>"], bos_id=ids["<s>"], unk_id=ids["<unk>"],
                                name="mlm tiny label-word BPE")
