"""The verbalizer loss (cross-entropy over the label words' scores only) against a
numpy computation from per-label log-likelihoods scored one label at a time."""

import jax
import numpy as np
import pytest
from _trainer_common import backbone, register_tiny_yesno, write_justice

from ptransfer import scoring
from ptransfer.core.errors import ConfigError
from ptransfer.training.optimizer import OptimizerConfig
from ptransfer.training.trainer import TrainConfig, Trainer, make_loss_fn


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_justice(str(tmp_path_factory.mktemp("data")))


def _eval_set(bb, name, data_dir):
    import tasks
    from ptransfer.data import load_task

    task, mlm = load_task(name, bb, data_dir)
    return scoring.build_eval_set(task, tasks.get_spec(name), bb, "train", 8,
                                  {"inputs": 12, "targets": 6},
                                  truncate_inputs=bb.truncation_side, mlm=mlm)


def _numpy_verbalizer_loss(bb, prompt, es):
    """-mean_b log softmax_c(ll[b, c])[label_b], ll from target_log_likelihood per label."""
    ll = np.zeros((es.size, len(es.candidates)), np.float64)
    target_ll = jax.jit(bb.target_log_likelihood)
    for c in range(len(es.candidates)):
        batch = {"inputs": es.inputs, "inputs_mask": es.inputs_mask,
                 "targets": np.repeat(es.candidates[c:c + 1], es.size, 0),
                 "targets_mask": np.repeat(es.candidates_mask[c:c + 1], es.size, 0)}
        ll[:, c] = np.asarray(target_ll(bb.params, prompt, batch), np.float64)
    m = ll.max(axis=1, keepdims=True)
    log_softmax = ll - (m + np.log(np.exp(ll - m).sum(axis=1, keepdims=True)))
    return -np.mean(log_softmax[np.arange(es.size), es.labels])


@pytest.mark.parametrize("preset", ["t5_tiny", "llama_tiny"])
def test_verbalizer_loss_equals_numpy(preset, data_dir, monkeypatch):
    name = register_tiny_yesno(monkeypatch)
    bb = backbone(preset)
    es = _eval_set(bb, name, data_dir)
    prompt = np.random.default_rng(0).normal(size=(3, bb.d_model)).astype(np.float32)
    batch = {"inputs": es.inputs, "inputs_mask": es.inputs_mask, "label": es.labels,
             "candidates": es.candidates, "candidates_mask": es.candidates_mask}
    loss_fn = jax.jit(make_loss_fn(bb, loss="verbalizer"))
    got = float(loss_fn(prompt, bb.params, batch))
    want = _numpy_verbalizer_loss(bb, prompt, es)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    # Not the LM loss: the label words' scores only.
    lm_batch = {"inputs": es.inputs, "inputs_mask": es.inputs_mask,
                "targets": es.candidates[es.labels], "targets_mask": es.candidates_mask[es.labels]}
    assert abs(float(jax.jit(make_loss_fn(bb))(prompt, bb.params, lm_batch)) - got) > 1e-3


def test_training_with_the_verbalizer_loss(data_dir, tmp_path, monkeypatch):
    from ptransfer.bank import store as bank

    name = register_tiny_yesno(monkeypatch)
    bb = backbone("llama_tiny")
    cfg = TrainConfig(backbone="preset:llama_tiny", task=name, model_dir=str(tmp_path / "run"),
                      prompt_length=4, init_from="vocab", batch_size=8, train_steps=6,
                      optimizer=OptimizerConfig(name="adamw", learning_rate=0.1, weight_decay=0.0),
                      input_length=8, target_length=4, eval_split="train", eval_every=3,
                      eval_examples=None, checkpoint_every=3, data_dir=data_dir, progress=False,
                      loss="verbalizer")
    result = Trainer(cfg, backbone=bb).run()
    assert result.steps == 6
    assert bank.read_entry(result.bank_entry)[1]["loss"] == "verbalizer"
    assert cfg.identity()["loss"] == "verbalizer" and "loss" not in TrainConfig(
        **{**cfg.__dict__, "loss": "lm"}).identity()
    with pytest.raises(ConfigError, match="loss 'ce'"):
        TrainConfig(**{**cfg.__dict__, "loss": "ce"}).validate()
    with pytest.raises(ConfigError, match="needs a classification task"):
        Trainer(TrainConfig(**{**cfg.__dict__, "task": "squad",
                               "model_dir": str(tmp_path / "qa")}), backbone=bb).run()
