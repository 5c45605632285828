"""Rematerialization (`remat`) and the compute-dtype setting of the backbones.

Remat must change memory only: the same logits and prompt gradients, the same
parameter tree (checkpoints, logical axes and sharding depend on it), and a
smaller compiled backward pass. The trainer's `compute_dtype` / `remat` fields
must reach the backbone it loads.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptransfer.backbones import configure_backbone, gemma3, layers, llama, load_backbone, mlm, t5
from ptransfer.checkpoints.tree import flatten
from ptransfer.core.errors import ConfigError
from ptransfer.training.trainer import TrainConfig, Trainer

POLICIES = ("full", "dots")


def _batch(vocab: int, b=3, li=7, lt=5, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((b, li), np.int32)
    mask[0, :3] = 0  # left padding on one row
    return {"inputs": jnp.asarray(rng.integers(3, vocab, (b, li)), jnp.int32),
            "inputs_mask": jnp.asarray(mask),
            "targets": jnp.asarray(rng.integers(3, vocab, (b, lt)), jnp.int32),
            "targets_mask": jnp.asarray(np.array([[1] * lt, [1] * lt, [1] * (lt - 2) + [0, 0]],
                                                 np.int32))}


def _outputs(backbone, params, prompt, batch):
    """One compile: (sum of log-likelihoods, its prompt gradient, teacher-forced
    logits[, FFN activations sown inside the layers (T5)])."""
    def run(p):
        f = lambda q: jnp.sum(backbone.target_log_likelihood(params, q, batch))  # noqa: E731
        loss, grad = jax.value_and_grad(f)(p)
        out = [loss, grad, backbone.logits(batch["inputs"], batch["targets"], p)]
        if backbone.family == "t5":
            out.append(backbone.ffn_activations(params, p, batch["inputs"], batch["inputs_mask"]))
        return out
    return jax.jit(run)(prompt)


@pytest.mark.parametrize("preset", ["t5_1_1_tiny", "llama_tiny", "gemma3_tiny"])
def test_remat_gives_the_same_logits_and_prompt_gradients(preset):
    """(a) 'full' and 'dots' compute what 'none' computes: log-likelihoods,
    prompt gradients and logits, and (T5) the sown FFN activations the ON
    indicator reads through the rematerialized layers; within 1e-6."""
    base = load_backbone(f"preset:{preset}")
    assert base.config.remat == "none"
    batch = _batch(base.config.vocab_size)
    prompt = jnp.asarray(np.random.default_rng(1).standard_normal((4, base.d_model)), jnp.float32)
    ref = _outputs(base, base.params, prompt, batch)
    assert float(jnp.max(jnp.abs(ref[1]))) > 1e-3  # the gradient is not trivially zero
    for policy in POLICIES:
        bb = configure_backbone(base, remat=policy)
        assert bb.config.remat == policy and bb.params is base.params
        got = _outputs(bb, base.params, prompt, batch)
        for name, x, y in zip(("loss", "prompt grad", "logits", "ffn acts"), got, ref):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6, err_msg=f"{policy}: {name}")


@pytest.mark.parametrize("family,preset", [(t5, "t5_tiny"), (t5, "t5_1_1_tiny"),
                                           (llama, "llama_tiny"), (mlm, "mlm_tiny"),
                                           (gemma3, "gemma3_tiny")])
def test_remat_keeps_the_parameter_tree(family, preset):
    """(b) Parameter paths, shapes and logical axes are identical with and
    without remat, so checkpoints, HF / T5X loading and sharding rules apply."""
    def tree(config):
        if family is mlm:
            shapes, axes = mlm._abstract_and_axes(config)
        else:
            shapes, axes = family.abstract_params(config)
        return ({k: tuple(v.shape) for k, v in flatten(shapes).items()},
                {k: tuple(v) for k, v in flatten(axes).items()} if family is not mlm else axes)

    config = family.PRESETS[preset]
    ref = tree(config)
    assert any("layers_1" in k for k in ref[0])
    for policy in POLICIES:
        assert tree(dataclasses.replace(config, remat=policy)) == ref


def test_remat_full_shrinks_the_compiled_backward_pass():
    """(c) Why remat exists: the compiled prompt-gradient step of a 4+4-layer
    T5 keeps less in temporaries with remat 'full' (and 'dots') than without.

    Compiled on CPU with XLA's `cse_barrier_expander` pass disabled: XLA:CPU
    otherwise removes the optimization barriers `jax.checkpoint` sets and CSE
    merges the recomputation back (TPU / GPU keep them). Abstract shapes only.
    """
    base = dataclasses.replace(t5.get_preset("t5_1_1_tiny"), d_model=64, num_heads=4,
                               head_dim=16, d_ff=128, num_layers=4, num_decoder_layers=4)
    sds = jax.ShapeDtypeStruct
    b, li, lt, p = 8, 96, 8, 8
    batch = {"inputs": sds((b, li), jnp.int32), "inputs_mask": sds((b, li), jnp.int32),
             "targets": sds((b, lt), jnp.int32), "targets_mask": sds((b, lt), jnp.int32)}
    temp = {}
    for policy in ("none", "full"):
        config = dataclasses.replace(base, remat=policy)
        bb = t5.T5Backbone(name="mem", config=config, params=None, vocab=None)
        shapes, _ = t5.abstract_params(config)
        grad = jax.jit(jax.grad(lambda pr, params, bt: jnp.sum(
            bb.target_log_likelihood(params, pr, bt))))
        compiled = grad.lower(sds((p, 64), jnp.float32), shapes, batch).compile(
            compiler_options={"xla_disable_hlo_passes": "cse_barrier_expander"})
        temp[policy] = compiled.memory_analysis().temp_size_in_bytes
    # Measured: 24.9 MiB without remat, 8.4 MiB with 'full' (13.3 MiB with 'dots').
    assert temp["full"] < 0.6 * temp["none"], temp


def test_train_config_compute_dtype_and_remat_reach_the_backbone(tmp_path):
    """(d) TrainConfig(compute_dtype='bfloat16', remat='full') loads a backbone
    that computes in bfloat16 with remat; a bad name is one clear ConfigError."""
    cfg = TrainConfig(backbone="preset:t5_tiny", task="mr", model_dir=str(tmp_path / "run"),
                      prompt_length=4, init_from="random_uniform", batch_size=2, train_steps=1,
                      compute_dtype="bfloat16", remat="full")
    bb, params = Trainer(cfg)._load_backbone(None)
    assert bb.config.compute_dtype == jnp.bfloat16 and bb.config.remat == "full"
    batch = _batch(bb.config.vocab_size)
    encoded, _ = bb._encode(params, jnp.zeros((4, bb.d_model)), batch["inputs"],
                            batch["inputs_mask"])
    # The precision policy (layers): bfloat16 matmul operands, float32 activations,
    # and the matmul weights stored once in bfloat16 (norm scales stay float32).
    assert encoded.dtype == jnp.float32
    assert params["token_embedder"]["embedding"].dtype == jnp.bfloat16
    assert params["encoder"]["layers_0"]["mlp"]["wi"]["kernel"].dtype == jnp.bfloat16
    assert params["encoder"]["encoder_norm"]["scale"].dtype == jnp.float32
    f32, _ = Trainer(dataclasses.replace(cfg, compute_dtype=None))._load_backbone(None)
    encoded32, _ = f32._encode(f32.params, jnp.zeros((4, bb.d_model)), batch["inputs"],
                               batch["inputs_mask"])
    assert 0 < float(jnp.max(jnp.abs(encoded - encoded32))) < 0.1  # computed in bf16, not f32
    # The compute dtype changes the numbers, so it is part of the run's identity.
    assert cfg.identity()["compute_dtype"] == "bfloat16"
    assert cfg.to_json()["remat"] == "full"
    # Defaults keep the backbone's own config.
    default = Trainer(dataclasses.replace(cfg, compute_dtype=None, remat=None))
    bb0, _ = default._load_backbone(None)
    assert bb0.config.compute_dtype == jnp.float32 and bb0.config.remat == "none"

    for field, bad, words in [("compute_dtype", "bfloat17", "floating-point dtype"),
                              ("compute_dtype", "int32", "floating-point dtype"),
                              ("remat", "everything", "remat policy")]:
        with pytest.raises(ConfigError) as err:
            Trainer(dataclasses.replace(cfg, **{field: bad}))
        assert bad in str(err.value) and words in str(err.value)
        assert field.upper() in str(err.value)
    with pytest.raises(ConfigError, match="remat policy"):
        load_backbone("preset:t5_tiny", remat="yes")
    with pytest.raises(ConfigError, match="remat policy"):
        dataclasses.replace(t5.get_preset("t5_tiny"), remat="Full").validate()
    assert set(layers.REMAT_POLICIES) >= {"none", "full", "dots"}
