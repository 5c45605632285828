"""TPT with the source's optimizer state: the bank keeps the AdamW moments of the
exported prompt, a run started from that entry continues them (step counter reset),
and sources without AdamW moments are refused."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _trainer_common import backbone, register_tiny_yesno, write_justice

from ptransfer.bank import store as bank
from ptransfer.core.errors import ConfigError
from ptransfer.experiments.tpt import run_pair
from ptransfer.training import checkpointing
from ptransfer.training.optimizer import OptimizerConfig, adam_moments, make_optimizer, with_adam_moments
from ptransfer.training.trainer import TrainConfig, Trainer

ADAMW = OptimizerConfig(name="adamw", learning_rate=0.05, weight_decay=0.01)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_justice(str(tmp_path_factory.mktemp("data")))


def test_carried_moments_continue_adamw_with_the_step_counter_reset():
    rng = np.random.default_rng(0)
    p, g = rng.normal(size=(2, 3, 4)).astype(np.float32)
    mu, nu = rng.normal(size=(3, 4)).astype(np.float32), rng.uniform(size=(3, 4)).astype(np.float32)
    opt = make_optimizer(ADAMW)
    state = with_adam_moments(opt.init(jnp.asarray(p)), mu, nu)
    updates, _ = opt.update(jnp.asarray(g), state, jnp.asarray(p))
    b1, b2, eps, lr, wd = ADAMW.b1, ADAMW.b2, ADAMW.eps, ADAMW.learning_rate, ADAMW.weight_decay
    m1, v1 = b1 * mu + (1 - b1) * g, b2 * nu + (1 - b2) * g * g
    want = -lr * ((m1 / (1 - b1)) / (np.sqrt(v1 / (1 - b2)) + eps) + wd * p)  # count 0 -> 1
    np.testing.assert_allclose(np.asarray(updates), want, rtol=2e-5, atol=1e-7)
    assert adam_moments(make_optimizer(OptimizerConfig()).init(jnp.asarray(p))) is None
    with pytest.raises(ConfigError, match="same prompt length"):
        with_adam_moments(opt.init(jnp.zeros((2, 4))), mu, nu)


def _config(tmp_path, data_dir, name, **kw):
    base = dict(backbone="preset:llama_tiny", task="tiny_yesno", model_dir=str(tmp_path / name),
                prompt_length=4, init_from="vocab", batch_size=8, train_steps=4, optimizer=ADAMW,
                input_length=8, target_length=4, eval_split="train", eval_every=2,
                eval_examples=None, checkpoint_every=2, data_dir=data_dir, progress=False,
                bank_dir=str(tmp_path / "bank"))
    base.update(kw)
    return TrainConfig(**base)


def _opt_leaves_at(model_dir, step, optimizer, prompt_length, d_model):
    zeros = jnp.zeros((prompt_length, d_model), jnp.float32)
    leaves, treedef = jax.tree_util.tree_flatten(jax.eval_shape(optimizer.init, zeros))
    abstract = {"prompt": zeros, "best_prompt": zeros, "opt_state": leaves,
                "best_opt_state": leaves, "rng": jax.random.key_data(jax.random.PRNGKey(0))}
    ckpt = checkpointing.Checkpointer(model_dir)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state, _ = ckpt.restore(step, checkpointing.abstract_like(abstract, sharding))
    ckpt.close()
    return jax.tree_util.tree_unflatten(treedef, state["opt_state"])


def test_tpt_from_a_bank_entry_with_its_adamw_moments(tmp_path, data_dir, monkeypatch):
    register_tiny_yesno(monkeypatch)
    bb = backbone("llama_tiny")
    src = Trainer(_config(tmp_path, data_dir, "src", export="final"), backbone=bb).run()
    _, meta, _ = bank.read_entry(src.bank_entry)
    assert meta["optimizer_state"] == "adam_moments" and meta["init_optimizer"] == "fresh"
    mu, nu = (bank.read_extra(src.bank_entry, k) for k in bank.ADAM_MOMENTS)
    # The moments of the exported (final) prompt: the optimizer state saved at its step.
    at_end = adam_moments(_opt_leaves_at(str(tmp_path / "src"), 4, make_optimizer(ADAMW), 4,
                                         bb.d_model))
    np.testing.assert_array_equal(mu, np.asarray(at_end[0]))
    np.testing.assert_array_equal(nu, np.asarray(at_end[1]))
    assert np.abs(mu).max() > 0 and nu.min() >= 0
    # The entry keeps both of the run's prompts.
    np.testing.assert_array_equal(bank.read_prompt(src.bank_entry, "final"), src.final_prompt)
    np.testing.assert_array_equal(bank.read_prompt(src.bank_entry, "best"), src.best_prompt)

    # TPT through run_pair: vanilla PT is the source run itself (same settings, seed 0).
    base = _config(tmp_path, data_dir, "unused", init_optimizer="source", export="final")
    pair = run_pair(base, src.bank_entry, "yesno", "tiny_yesno", [0], str(tmp_path / "tpt"),
                    backbone=bb, pt_model_dir=lambda target, seed: str(tmp_path / "src"))
    assert pair["init_optimizer"] == "source"
    assert pair["source_prompt_step"] == meta["final_step"] == 4  # exported 'final'
    tpt_dir = pair["tpt"]["model_dirs"]["0"]
    assert tpt_dir.endswith("tpt/tiny_yesno/yesno+opt/seed0")
    identity = json.load(open(f"{tpt_dir}/run_identity.json"))
    assert identity["init_optimizer"] == "source"
    start = _opt_leaves_at(tpt_dir, 0, make_optimizer(ADAMW), 4, bb.d_model)  # step-0 state
    np.testing.assert_array_equal(np.asarray(adam_moments(start)[0]), mu)
    np.testing.assert_array_equal(np.asarray(adam_moments(start)[1]), nu)
    counts = [x.count for x in jax.tree_util.tree_leaves(
        start, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(x, optax.ScaleByAdamState)]
    assert [int(c) for c in counts] == [0]
    tpt_entry = bank.find_entry(str(tmp_path / "bank"), bb.name, "tiny_yesno",
                                "tpt-yesno+opt-seed0")
    assert tpt_entry.read()[1]["init_optimizer"] == "source"

    # A vocab-initialized run has no source state: fresh under either setting.
    assert "init_optimizer" not in _config(tmp_path, data_dir, "v",
                                           init_optimizer="source").identity()
    # Another optimizer on either side is refused with one message.
    with pytest.raises(ConfigError, match="this run's optimizer is 'adafactor'"):
        _config(tmp_path, data_dir, "x", init_from=f"file:{src.bank_entry}",
                init_optimizer="source", optimizer=OptimizerConfig()).validate()
    ada = Trainer(_config(tmp_path, data_dir, "ada", optimizer=OptimizerConfig(), train_steps=2,
                          run_name="ada"), backbone=bb).run()
    assert bank.read_extra(ada.bank_entry, "adam_mu") is None
    with pytest.raises(ConfigError, match="keeps no AdamW moments .*adafactor"):
        Trainer(dataclasses.replace(base, init_from=f"file:{ada.bank_entry}",
                                    model_dir=str(tmp_path / "y")), backbone=bb).run()
