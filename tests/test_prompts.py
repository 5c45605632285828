"""Prompt initializers: each one's rows come from where it says, at the right scale."""

import os

import numpy as np
import pytest
from _trainer_common import backbone

from ptransfer import prompts
from ptransfer.core.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def t5():
    return backbone("t5_tiny")


def _table(bb):
    return np.asarray(bb.embedding_table(bb.params), np.float32)


def test_random_uniform_matches_embedding_std_and_seed(t5):
    table = _table(t5)
    p = prompts.init_prompt("random", t5, 400, seed=3)
    assert p.shape == (400, t5.d_model) and p.dtype == np.float32
    assert abs(p.std() - table.std()) / table.std() < 0.05
    assert np.abs(p).max() <= np.sqrt(3) * table.std() + 1e-6
    np.testing.assert_array_equal(p, prompts.init_prompt("random", t5, 400, seed=3))
    assert not np.array_equal(p, prompts.init_prompt("random", t5, 400, seed=4))


def test_vocab_sample_rows_are_distinct_regular_token_embeddings(t5):
    table = _table(t5)
    p = prompts.init_prompt("vocab", t5, 20, seed=1)
    ids = [int(np.argmin(np.abs(table - row).sum(-1))) for row in p]
    np.testing.assert_allclose(table[ids], p, atol=1e-6)
    assert len(set(ids)) == 20
    specials = {t5.vocab.pad_id, t5.vocab.eos_id, t5.vocab.unk_id}
    assert not specials & set(ids) and max(ids) < t5.vocab.vocab_size


def test_class_labels_are_mean_word_embeddings_cycled(t5):
    p = prompts.init_prompt("labels", t5, 5, label_words=["no", "yes"])
    table = _table(t5)
    no = table[t5.vocab.encode("no")].mean(0)
    yes = table[t5.vocab.encode("yes")].mean(0)
    np.testing.assert_allclose(p, np.stack([no, yes, no, yes, no]), atol=1e-6)
    with pytest.raises(ConfigError, match="label words"):
        prompts.init_prompt("labels", t5, 5, label_words=[])


def test_text_init_embeds_the_string_cycled(t5):
    p = prompts.init_prompt("text:abc", t5, 7)
    table = _table(t5)
    ids = t5.vocab.encode("abc")
    np.testing.assert_allclose(p, table[[ids[i % 3] for i in range(7)]], atol=1e-6)


def test_file_bank_and_peft_sources_round_trip(t5, tmp_path):
    from ptransfer.bank import peft_format
    from ptransfer.bank import store as bank

    src = np.random.default_rng(0).normal(size=(6, t5.d_model)).astype(np.float32)
    np.save(tmp_path / "p.npy", src)
    np.testing.assert_array_equal(prompts.init_prompt(str(tmp_path / "p.npy"), t5, 6), src)
    entry = bank.write_entry(str(tmp_path / "bank"), "t5_tiny", "justice", "r0", src,
                             {"init": "x", "steps": 1, "best_score": None, "metric": None,
                              "seed": 0})
    np.testing.assert_array_equal(prompts.init_prompt(f"file:{entry}", t5, 6), src)
    peft_dir = peft_format.export_peft(src, str(tmp_path / "peft"), "SEQ_2_SEQ_LM")
    np.testing.assert_array_equal(prompts.init_prompt(f"file:{peft_dir}", t5, 6), src)
    with pytest.raises(ConfigError, match="PROMPT_LENGTH=6"):
        prompts.init_prompt(str(tmp_path / "p.npy"), t5, 5)


def test_wrong_width_points_to_the_projector_and_pickles_are_refused(t5, tmp_path):
    np.save(tmp_path / "wide.npy", np.zeros((4, t5.d_model + 1), np.float32))
    with pytest.raises(ConfigError, match="ptransfer project apply"):
        prompts.init_prompt(f"file:{tmp_path / 'wide.npy'}", t5, 4)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match="pickle"):
        prompts.init_prompt(f"file:{tmp_path / 'obj.npy'}", t5, 1)
    with pytest.raises(ConfigError, match="unknown INIT_FROM 'vocb'.*'vocab'"):
        prompts.init_prompt("vocb", t5, 4)


def test_projected_prompt_through_a_trained_projector_dir(t5, tmp_path):
    from ptransfer.projector.model import Projector

    llama = backbone("llama_tiny")
    proj = Projector.for_backbones(llama, t5, 3, hidden=16)
    proj_dir = proj.save(str(tmp_path / "proj"))
    src = np.random.default_rng(1).normal(size=(3, llama.d_model)).astype(np.float32)
    np.save(tmp_path / "src.npy", src)
    import gin

    gin.clear_config()
    try:
        gin.bind_parameter("prompts.from_projected.projector", proj_dir)
        got = prompts.init_prompt(f"projected:{tmp_path / 'src.npy'}", t5, 3)
    finally:
        gin.clear_config()
    np.testing.assert_allclose(got, proj.project(src), atol=1e-6)
    with pytest.raises(ConfigError, match="project apply"):  # not projected: wrong width
        prompts.init_prompt(f"projected:{tmp_path / 'src.npy'}", t5, 3)


def test_describe_init_records_gin_settings():
    import gin

    gin.clear_config()
    try:
        gin.parse_config("prompts.random_uniform.scale = 0.5\n"
                         "prompts.from_file.path = '/b/e'")
        assert prompts.describe_init("random") == "random(scale=0.5)"
        assert prompts.describe_init("file") == "file:/b/e"
        assert prompts.describe_init("text:hi") == "text:hi"
    finally:
        gin.clear_config()
    assert os.sep in prompts.parse_init_from("/x/p.npy")[1]


def test_a_callable_hook_initializes_and_is_checked(t5):
    p = prompts.init_prompt(lambda ctx: np.ones((ctx.length, ctx.d_model)), t5, 3)
    np.testing.assert_array_equal(p, np.ones((3, t5.d_model), np.float32))
    with pytest.raises(ConfigError, match="project apply"):
        prompts.init_prompt(lambda ctx: np.ones((ctx.length, 5)), t5, 3)
    assert prompts.describe_init(test_a_callable_hook_initializes_and_is_checked).startswith(
        "callable:")
