"""Rank classification and greedy-decoding evaluation against direct computations."""

import jax
import numpy as np
import pytest
from _trainer_common import backbone, register_tiny_yesno, write_justice

from ptransfer import data as features
from ptransfer import scoring


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_justice(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(params=["t5_tiny", "llama_tiny", "gemma3_tiny"])
def setup(request, data_dir, monkeypatch):
    import tasks
    from ptransfer.data import default_truncation, load_task

    name = register_tiny_yesno(monkeypatch)
    bb = backbone(request.param)
    task, mlm = load_task(name, bb, data_dir)
    eval_set = scoring.build_eval_set(task, tasks.get_spec(name), bb, "train", 7,
                                      {"inputs": 12, "targets": 6},
                                      truncate_inputs=default_truncation(bb), mlm=mlm)
    return bb, eval_set


def _naive_scores(bb, prompt, es):
    """Each (example, label) pair scored alone through target_log_likelihood."""
    out = np.zeros((es.size, len(es.candidates)), np.float32)
    for c in range(len(es.candidates)):
        batch = {"inputs": es.inputs, "inputs_mask": es.inputs_mask,
                 "targets": np.repeat(es.candidates[c:c + 1], es.size, 0),
                 "targets_mask": np.repeat(es.candidates_mask[c:c + 1], es.size, 0)}
        out[:, c] = np.asarray(jax.jit(bb.target_log_likelihood)(bb.params, prompt, batch))
    return out


def test_eval_set_is_the_first_examples_in_order(setup):
    bb, es = setup
    assert es.size == 7 and es.labels.tolist() == [1, 0, 1, 0, 1, 0, 1]
    cands, mask = features.label_candidates(es.spec, bb.vocab, bb.add_eos_to_targets, 6,
                                            target_delimiter=bb.target_delimiter)
    np.testing.assert_array_equal(es.candidates, cands)
    np.testing.assert_array_equal(es.candidates_mask, mask)


def test_batched_rank_classification_equals_naive_scoring(setup):
    bb, es = setup
    prompt = np.random.default_rng(0).normal(size=(3, bb.d_model)).astype(np.float32)
    scorer = scoring.Scorer(bb, batch_size=4)  # 7 examples: the last batch is padded
    got = scorer.candidate_log_likelihoods(prompt, es)
    np.testing.assert_allclose(got, _naive_scores(bb, prompt, es), rtol=1e-5, atol=1e-4)
    pred = got.argmax(-1)
    acc = 100.0 * np.mean(pred == es.labels)
    recalls = [np.mean(pred[es.labels == c] == c) for c in (0, 1)]
    metrics = scorer.evaluate(prompt, es)
    assert metrics["accuracy"] == pytest.approx(acc)
    assert metrics["balanced_accuracy"] == pytest.approx(100.0 * np.mean(recalls))
    if bb.family == "t5":  # no prompt (the baseline of every comparison) scores too
        no_prompt = scorer.candidate_log_likelihoods(None, es)
        assert no_prompt.shape == got.shape and np.isfinite(no_prompt).all()
        assert not np.allclose(no_prompt, got)


def test_prompt_stack_equals_single_prompts_and_swaps_without_recompiling(setup):
    bb, es = setup
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(3, 3, bb.d_model)).astype(np.float32)
    scorer = scoring.Scorer(bb, batch_size=4, prompts_per_call=2)
    single = np.stack([scorer.candidate_log_likelihoods(p, es) for p in stack])
    compiled = scorer._score._cache_size()
    for p in rng.normal(size=(3, 3, bb.d_model)).astype(np.float32):
        scorer.candidate_log_likelihoods(p, es)
    assert scorer._score._cache_size() == compiled  # new prompts, same executable
    got = scorer.candidate_log_likelihoods_stack(stack, es)
    np.testing.assert_allclose(got, single, rtol=1e-5, atol=1e-4)
    stacked = scorer._score_stack._cache_size()
    # a stack of another size is chunked into the same executable
    np.testing.assert_allclose(scorer.candidate_log_likelihoods_stack(stack[:2], es),
                               single[:2], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scorer.candidate_log_likelihoods_stack(stack[2:], es),
                               single[2:], rtol=1e-5, atol=1e-4)
    assert scorer._score_stack._cache_size() == stacked
    assert [m["accuracy"] for m in scorer.evaluate_stack(stack, es)] == \
        [scorer.metrics_from_scores(s, es)["accuracy"] for s in single]


def test_one_prompt_per_call_reuses_the_single_prompt_executable(setup):
    bb, es = setup
    stack = np.random.default_rng(2).normal(size=(3, 3, bb.d_model)).astype(np.float32)
    scorer = scoring.Scorer(bb, batch_size=4, prompts_per_call=1)
    single = np.stack([scorer.candidate_log_likelihoods(p, es) for p in stack])
    compiled = scorer._score._cache_size()
    stacked = scorer._score_stack._cache_size()
    np.testing.assert_array_equal(scorer.candidate_log_likelihoods_stack(stack, es), single)
    assert scorer._score._cache_size() == compiled
    assert scorer._score_stack._cache_size() == stacked  # the vmapped program never ran


def test_greedy_decoding_is_scored_with_the_task_metrics():
    import jax.numpy as jnp

    from tasks import metrics
    from tasks.specs import get_spec

    bb = backbone("t5_tiny")
    spec = get_spec("squad")
    inputs = np.array([[0, 0, 70, 71, 1], [0, 80, 81, 82, 1], [90, 91, 92, 93, 1]], np.int32)
    es = scoring.EvalSet(spec=spec, split="validation", inputs=inputs,
                         inputs_mask=(inputs > 0).astype(np.int32),
                         references=[["ab"], ["cd", "x"], ["e"]], max_decode_len=5)
    prompt = np.random.default_rng(2).normal(size=(2, bb.d_model)).astype(np.float32)
    got = scoring.Scorer(bb, batch_size=2).evaluate(prompt, es)
    ids = np.asarray(bb.greedy_decode(bb.params, jnp.asarray(prompt), inputs, es.inputs_mask, 5))
    texts = [bb.vocab.decode([int(t) for t in row if t > 0]).strip() for row in ids]
    assert got["squad_f1"] == pytest.approx(metrics.squad_f1(es.references, texts))
    assert set(got) == {"squad_f1", "squad_em"}


def test_stratified_subset_keeps_the_class_proportions_and_is_seeded():
    """A split sorted by label (its first rows one class) gives a subset with the
    split's proportions: the largest-remainder shares, hand-computed."""
    labels = np.array([0] * 62 + [1] * 30 + [2] * 8)
    idx = scoring.stratified_indices(labels, 25, seed=0)
    assert len(idx) == 25 and np.all(np.diff(idx) > 0)
    # quotas 15.5, 7.5, 2.0 -> floors 15, 7, 2 and one more for the class with the larger
    # remainder (0.5 each: the smaller class id wins)
    assert np.bincount(labels[idx]).tolist() == [16, 7, 2]
    np.testing.assert_array_equal(idx, scoring.stratified_indices(labels, 25, seed=0))
    assert not np.array_equal(idx, scoring.stratified_indices(labels, 25, seed=1))
    np.testing.assert_array_equal(scoring.stratified_indices(labels, 200), np.arange(100))


def test_stratified_eval_subset_of_a_real_corpus_is_not_single_class(assets_dir):
    """rt's validation split starts with one class: its first 64 examples are
    (nearly) all positive, the stratified 64 keep the split's proportions."""
    import tasks
    from ptransfer.data import load_task

    bb = backbone("llama_tiny")
    task, _ = load_task("rt", bb)
    spec, lengths = tasks.get_spec("rt"), {"inputs": 16, "targets": 12}
    whole = scoring.build_eval_set(task, spec, bb, "validation", None, lengths,
                                   truncate_inputs="left")
    first = scoring.build_eval_set(task, spec, bb, "validation", 64, lengths,
                                   truncate_inputs="left")
    strat = scoring.build_eval_set(task, spec, bb, "validation", 64, lengths,
                                   truncate_inputs="left", subset="stratified")
    share = np.bincount(whole.labels, minlength=2) / whole.size
    assert np.bincount(first.labels, minlength=2).min() <= 2
    np.testing.assert_allclose(np.bincount(strat.labels, minlength=2) / 64, share, atol=1 / 64)
    keep = scoring.stratified_indices(whole.labels, 64)
    np.testing.assert_array_equal(strat.inputs, whole.inputs[keep])


def test_eval_sets_are_read_once_inside_reusing_eval_sets(data_dir, monkeypatch):
    """Inside the block the same (task, split, subset, lengths) gives the same EvalSet,
    its arrays read-only; another subset is another read; outside, every call reads."""
    import tasks
    from ptransfer.data import load_task

    name = register_tiny_yesno(monkeypatch)
    bb = backbone("llama_tiny")
    task, _ = load_task(name, bb, data_dir)
    spec, lengths = tasks.get_spec(name), {"inputs": 12, "targets": 6}

    def read(n=5):
        return scoring.build_eval_set(task, spec, bb, "train", n, lengths,
                                      truncate_inputs="left")

    outside = read()
    assert read() is not outside and outside.inputs.flags.writeable
    with scoring.reusing_eval_sets():
        first = read()
        assert read() is first
        assert read(6) is not first and read(6).size == 6
        np.testing.assert_array_equal(first.inputs, outside.inputs)
        np.testing.assert_array_equal(first.labels, outside.labels)
        with pytest.raises(ValueError):
            first.inputs[0, 0] = 1
        with scoring.reusing_eval_sets():  # a nested block keeps the outer one's sets
            assert read() is first
    assert read() is not first


def test_a_scorer_of_placed_params_uses_their_mesh_and_its_executables():
    """A Scorer given no mesh takes the one its params are placed on: it then reuses
    the executable a scorer with that explicit mesh compiled (no new compile), and a
    scorer of unplaced params runs without a mesh."""
    import tasks
    from ptransfer import load_backbone
    from ptransfer.core import sharding

    mesh = sharding.make_mesh(-1, 1)
    bb = load_backbone("preset:llama_tiny", mesh=mesh)
    assert sharding.mesh_of(bb.params) == mesh
    assert sharding.mesh_of(backbone("llama_tiny").params) is None
    assert scoring.Scorer(backbone("llama_tiny"), batch_size=2).mesh is None
    spec = tasks.get_spec("imdb")
    inputs = np.arange(1, 13, dtype=np.int32).reshape(2, 6)
    cands, cmask = features.label_candidates(spec, bb.vocab, bb.add_eos_to_targets, 12,
                                             target_delimiter=bb.target_delimiter)
    es = scoring.EvalSet(spec=spec, split="test", inputs=inputs,
                         inputs_mask=np.ones_like(inputs), labels=np.array([0, 1]),
                         candidates=cands, candidates_mask=cmask)
    prompt = np.random.default_rng(3).normal(size=(2, bb.d_model)).astype(np.float32)
    explicit = scoring.Scorer(bb, batch_size=2, mesh=mesh)
    want = explicit.candidate_log_likelihoods(prompt, es)
    compiled = explicit._score._cache_size()
    implicit = scoring.Scorer(bb, batch_size=2)
    assert implicit.mesh == mesh
    np.testing.assert_array_equal(implicit.candidate_log_likelihoods(prompt, es), want)
    assert implicit._score._cache_size() == compiled
