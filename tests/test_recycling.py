"""The training-free baselines: linear prompt recycling and the random prompt."""

import numpy as np
import pytest

from ptransfer.core.errors import ConfigError
from ptransfer.projector import recycling
from ptransfer.prompts import random_prompt_like


def _word_vocab(words):
    """A real TokenizersVocabulary over a word-level tokenizer with the given id order."""
    import tokenizers
    from tokenizers import models, pre_tokenizers

    from ptransfer.core.vocab import TokenizersVocabulary

    vocab = {w: i for i, w in enumerate(words)}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    return TokenizersVocabulary(tok, eos_id=1, unk_id=2)


def test_recycling_equals_numpy_lstsq_across_tokenizers():
    rng = np.random.default_rng(0)
    common = [f"w{i}" for i in range(60)]
    src_words = ["<pad>", "</s>", "<unk>"] + common[:50] + [f"s{i}" for i in range(10)]
    tgt_only = [f"t{i}" for i in range(7)]
    tgt_body = common[10:60] + tgt_only
    rng.shuffle(tgt_body)  # same strings, other ids
    tgt_words = ["<pad>", "</s>", "<unk>"] + tgt_body
    src_vocab, tgt_vocab = _word_vocab(src_words), _word_vocab(tgt_words)
    src_emb = rng.normal(size=(len(src_words) + 4, 12))  # padded table rows beyond the vocab
    tgt_emb = rng.normal(size=(len(tgt_words), 20))

    src_ids, tgt_ids = recycling.token_alignment(src_vocab, tgt_vocab, len(src_emb), len(tgt_emb))
    # Independent alignment: the strings both vocabularies hold, specials excluded.
    shared = [w for w in src_words if w in tgt_words and not w.startswith("<")]
    assert sorted(zip(src_ids, tgt_ids)) == sorted(
        (src_words.index(w), tgt_words.index(w)) for w in shared)
    assert len(shared) == 40

    w = recycling.fit_linear_map(src_emb[src_ids], tgt_emb[tgt_ids])
    x = src_emb[[src_words.index(s) for s in shared]]
    y = tgt_emb[[tgt_words.index(s) for s in shared]]
    expected, *_ = np.linalg.lstsq(x, y, rcond=None)
    np.testing.assert_allclose(w, expected, atol=1e-10)

    prompt = rng.normal(size=(5, 12)).astype(np.float32)
    np.testing.assert_allclose(recycling.recycle_prompt(prompt, w),
                               prompt.astype(np.float64) @ expected, atol=1e-5)
    with pytest.raises(ConfigError, match="width 20 does not match the recycler's source width 12"):
        recycling.recycle_prompt(rng.normal(size=(5, 20)), w)


def test_same_vocabulary_aligns_identical_ids():
    import seqio

    a, b = seqio.ByteVocabulary(), seqio.ByteVocabulary()
    # Tables padded past the vocabulary (260 and 264 rows): only the 259 real ids align.
    src_ids, tgt_ids = recycling.token_alignment(a, b, 260, 264)
    np.testing.assert_array_equal(src_ids, np.arange(259))
    np.testing.assert_array_equal(tgt_ids, np.arange(259))
    src_ids, _ = recycling.token_alignment(a, b, 260, 264, max_tokens=100)
    np.testing.assert_array_equal(src_ids, np.arange(100))


def test_random_prompt_baseline_has_the_same_norm():
    ref = np.random.default_rng(1).normal(size=(6, 10)) * 3.0
    r0 = random_prompt_like(ref, seed=0)
    r1 = random_prompt_like(ref, seed=1)
    assert r0.shape == ref.shape and r0.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(r0), np.linalg.norm(ref), rtol=1e-6)
    assert not np.allclose(r0, r1)


def test_token_texts_read_both_space_markers():
    import tokenizers
    from tokenizers import decoders, models

    from ptransfer.core.vocab import TokenizersVocabulary

    def vocab(words, decoder=None):
        tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
                                                    unk_token="<unk>"))
        if decoder is not None:
            tok.decoder = decoder
        tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
        return TokenizersVocabulary(tok, eos_id=1, unk_id=2)

    bpe = vocab(["<pad>", "</s>", "<unk>", "\u0120the", "the", "\u010a", "\u0120cat"],
                decoders.ByteLevel())
    spm = vocab(["<pad>", "</s>", "<unk>", "the", "\u2581the", "<0x0A>", "\u2581dog"])
    assert recycling.token_texts(bpe, 7) == ["", "", "", " the", "the", "\n", " cat"]
    assert recycling.token_texts(spm, 7) == ["", "", "", "the", " the", "\n", " dog"]
    src_ids, tgt_ids = recycling.token_alignment(bpe, spm, 7, 7)
    assert sorted(zip(src_ids.tolist(), tgt_ids.tolist())) == [(3, 4), (4, 3), (5, 5)]
