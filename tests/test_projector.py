"""The cross-model prompt projector, checked on a backbone pair with a known answer.

Backbone B is backbone A with its residual stream rotated by an orthogonal Q
(RMSNorm scales folded into the following kernels, untied head), so B computes
exactly what A computes when every residual vector, the prompt included, is
rotated: the right projector is P -> P @ Q. Q fixes the all-ones direction and
the source prompts have centered tokens of equal std, so P @ Q keeps that
shape and lies inside what the projector's final LayerNorm can output.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptransfer.bank import store as bank
from ptransfer.core.errors import ConfigError
from ptransfer.experiments import cross_model
from ptransfer.projector import model as pj
from ptransfer.projector import recycling
from ptransfer.projector import training as pj_training

D = 16          # width of the tiny backbones
HEAD_SCALE = 8  # sharper next-token distributions: the prompt's effect is easy to see


def _ones_fixing_rotation(d: int, seed: int) -> np.ndarray:
    """A random orthogonal Q [d, d] with Q @ 1 = 1 (it rotates the complement of 1)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(np.concatenate([np.ones((d, 1)), rng.normal(size=(d, d - 1))], 1))
    r, _ = np.linalg.qr(rng.normal(size=(d - 1, d - 1)))
    m = np.eye(d)
    m[1:, 1:] = r
    return u @ m @ u.T


def _tiny_llama(seed: int):
    """A untied tiny LLaMA (llama_tiny's family, width 16) with random norm scales."""
    import flax.linen as nn
    import seqio

    from ptransfer.backbones import llama

    cfg = dataclasses.replace(llama.PRESETS["llama_tiny"], d_model=D, num_heads=2,
                              num_kv_heads=1, head_dim=8, d_ff=2 * D, tie_word_embeddings=False)
    params = nn.unbox(llama.LlamaModel(cfg).init(jax.random.PRNGKey(seed),
                                                 jnp.zeros((1, 1), jnp.int32)))["params"]
    params = jax.tree_util.tree_map(np.asarray, llama._to_dict(params))
    rng = np.random.default_rng(seed + 1)

    def perturb(path, x):
        if path[-1].key == "scale":  # RMSNorm scales are ones at init: make folding matter
            return np.exp(0.4 * rng.normal(size=x.shape)).astype(np.float32)
        return x

    params = jax.tree_util.tree_map_with_path(perturb, params)
    params["logits_dense"]["kernel"] = params["logits_dense"]["kernel"] * HEAD_SCALE
    return llama.LlamaBackbone(name="tiny_a", config=cfg, params=params,
                               vocab=seqio.ByteVocabulary())


def _rotated(params, q):
    """B's params: residual stream rotated by q, every RMSNorm scale folded into the
    kernels that read its output (scale -> ones)."""
    p = jax.tree_util.tree_map(lambda x: np.array(x, np.float64), params)

    def fold(norm, kernels):
        for k in kernels:
            k["kernel"] = q.T @ (norm["scale"][:, None] * k["kernel"])
        norm["scale"] = np.ones_like(norm["scale"])

    p["token_embedder"]["embedding"] = p["token_embedder"]["embedding"] @ q
    for name, layer in p.items():
        if name.startswith("layers_"):
            fold(layer["pre_attention_layer_norm"],
                 [layer["attention"][n] for n in ("query", "key", "value")])
            layer["attention"]["out"]["kernel"] = layer["attention"]["out"]["kernel"] @ q
            fold(layer["pre_mlp_layer_norm"], [layer["mlp"]["wi_0"], layer["mlp"]["wi_1"]])
            layer["mlp"]["wo"]["kernel"] = layer["mlp"]["wo"]["kernel"] @ q
    fold(p["decoder_norm"], [p["logits_dense"]])
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), p)


def _prompts(rng, n: int, length: int) -> np.ndarray:
    """[n, length, D] prompts whose tokens are centered with unit std."""
    p = rng.normal(size=(n, length, D))
    p -= p.mean(-1, keepdims=True)
    p /= p.std(-1, keepdims=True)
    return p.astype(np.float32)


def _rel_err(pred, want) -> np.ndarray:
    n = len(want)
    return (np.linalg.norm((pred - want).reshape(n, -1), axis=-1)
            / np.linalg.norm(want.reshape(n, -1), axis=-1))


@pytest.fixture(scope="module")
def models():
    a = _tiny_llama(0)
    q = _ones_fixing_rotation(D, 2)
    b = dataclasses.replace(a, name="tiny_b_rotated", params=_rotated(a.params, q))
    return a, b, q


# Two rank-classification tasks unlike the projector's training data: other input
# lengths, other label words.
OTHER_TASKS = {"three_way": (9, ("yes", "no!", "may")), "two_way": (12, ("good", "bad!"))}


def _scores(backbone, prompts, inputs, words):
    cands = np.asarray([[ord(c) + 3 for c in w] for w in words], np.int32)  # ByteVocabulary ids
    return np.asarray(backbone.score_candidates(backbone.params, prompts, inputs,
                                                np.ones_like(inputs), cands, np.ones_like(cands)))


# ---- 1. the rotated pair --------------------------------------------------------------


def test_rotated_backbone_computes_what_a_computes(models):
    a, b, q = models
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 259, size=(3, 7))
    prompt = _prompts(rng, 1, 2)[0]
    la = np.asarray(a.logits(ids, prompt=prompt))
    np.testing.assert_allclose(np.asarray(b.logits(ids, prompt=prompt @ q)), la, atol=1e-4)
    np.testing.assert_allclose(np.asarray(b.logits(ids)), np.asarray(a.logits(ids)), atol=1e-4)
    # ... and the unrotated prompt is NOT the same function (the check can fail).
    assert np.abs(np.asarray(b.logits(ids, prompt=prompt)) - la).max() > 1.0
    # Same vocabulary and E_B = E_A Q: linear recycling recovers Q exactly.
    np.testing.assert_allclose(recycling.fit_recycler(a, b), q, atol=1e-4)


# ---- 2. distance minimizing recovers the rotation -----------------------------------------


def test_distance_minimizing_recovers_the_rotation(models):
    a, b, q = models
    rng = np.random.default_rng(1)
    length, n_train, n_test = 2, 512, 64
    src = _prompts(rng, n_train + n_test, length)
    tgt = (src @ q).astype(np.float32)
    spec = pj.ProjectorSpec(length, D, D, a.name, b.name, hidden=32, activation="tanh")
    settings = pj_training.TrainSettings(objective="distance", steps=400, learning_rate=2e-2,
                                schedule="cosine", weight_decay=0.0)
    trained = pj_training.train_projector(pj.Projector.create(spec, 0), settings,
                                 pairs=pj_training.PromptPairs(src[:n_train], tgt[:n_train]))
    held_out = trained.project(src[n_train:], target=b)
    err = _rel_err(held_out, tgt[n_train:])
    assert err.mean() < 0.05 and err.max() < 0.10, (err.mean(), err.max())
    # The projected held-out prompts make B score as A does with the originals.
    inputs = rng.integers(3, 259, size=(n_test, 9))
    sa = _scores(a, src[n_train:], inputs, OTHER_TASKS["three_way"][1])
    sb = _scores(b, held_out, inputs, OTHER_TASKS["three_way"][1])
    base = _scores(b, src[n_train:], inputs, OTHER_TASKS["three_way"][1])  # not projected
    gap, base_gap = np.abs(sb - sa).mean(), np.abs(base - sa).mean()
    print(f"distance: held-out rel err mean {err.mean():.4f} max {err.max():.4f}; "
          f"score gap {gap:.4f} nats (unprojected {base_gap:.3f})")
    assert gap < 0.25 and gap < 0.05 * base_gap, (gap, base_gap)
    assert (sb.argmax(-1) == sa.argmax(-1)).mean() >= 0.95


# ---- 3. task tuning through the frozen target ------------------------------------------------


def _next_token_log_probs(backbone, prompts, inputs):
    logits = np.asarray(backbone.logits(inputs, prompt=prompts), np.float64)[:, -1]
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def test_task_tuning_makes_b_reproduce_a_on_other_tasks(models):
    """One training task: continue a 4-byte input as A does under the source prompt
    (A's greedy continuation of 8 tokens, one source prompt per example). Its loss is
    B's NLL of those targets given the projected prompt, so the projector learns from
    the target model alone. Then, on held-out prompts, B with projected prompts must
    score as A does on tasks it never saw (other input lengths, rank classification
    over other label words) and give A's next-token distribution.

    Tolerances (measured: KL ~0.04 nats vs ~2.8 for the untrained projector; score
    gap ~0.7 vs ~5 nats; agreement ~0.97-1.0): next-token KL(A || B) < 0.1 nats
    and < 5% of the untrained projector's; mean |candidate log-likelihood gap| < 25%
    of the untrained projector's; rank-classification decisions agree on >= 90%.
    """
    a, b, q = models
    rng = np.random.default_rng(3)
    n, li, lt, bs = 4096, 4, 8, 64
    src = _prompts(rng, n + 256, 1)
    inputs = rng.integers(3, 259, size=(n + 256, li)).astype(np.int32)
    ones = np.ones_like(inputs)
    targets = np.concatenate([
        np.asarray(a.greedy_decode(a.params, src[i:i + 1024], inputs[i:i + 1024],
                                   ones[i:i + 1024], lt)) for i in range(0, n + 256, 1024)])
    tmask = (targets > 0).astype(np.int32)  # greedy_decode zeroes EOS and what follows

    def batch(idx):
        return {"inputs": inputs[idx], "inputs_mask": ones[idx], "targets": targets[idx],
                "targets_mask": tmask[idx]}

    def stream():
        r = np.random.default_rng(0)
        while True:
            idx = r.choice(n, bs, replace=False)
            yield {"source_prompt": src[idx], "batch": batch(idx)}

    before = jax.tree_util.tree_map(np.array, b.params)
    spec = pj.ProjectorSpec(1, D, D, a.name, b.name, hidden=32, activation="tanh")
    untrained = pj.Projector.create(spec, 0)
    settings = pj_training.TrainSettings(objective="task", steps=400, learning_rate=1e-2,
                                warmup_steps=20, schedule="cosine", weight_decay=0.0,
                                log_every=100)
    trained = pj_training.train_projector(untrained, settings, task_data=stream(), target=b)

    # The target's params are bitwise unchanged.
    jax.tree_util.tree_map(np.testing.assert_array_equal, b.params, before)
    # The training task's loss on held-out prompts and inputs went down.
    held = np.arange(n, n + 256)
    module = spec.module()

    def loss(proj):
        return float(pj_training.task_loss(module, proj.params, b.target_log_likelihood, b.params,
                                  src[held], batch(held)))

    loss0, loss1 = loss(untrained), loss(trained)
    assert loss1 < 0.5 * loss0, (loss0, loss1)
    history = trained.summary["history"]
    assert history[-1]["task"] < history[0]["task"]

    # Other tasks, held-out prompts: B(projected) reproduces A.
    test_prompts = _prompts(rng, 64, 1)
    proj_t, proj_u = trained.project(test_prompts, target=b), untrained.project(test_prompts)
    x9 = rng.integers(3, 259, size=(64, 9))
    la = _next_token_log_probs(a, test_prompts, x9)

    def kl(prompts):
        return float((np.exp(la) * (la - _next_token_log_probs(b, prompts, x9))).sum(-1).mean())

    kl_t, kl_u = kl(proj_t), kl(proj_u)
    report = [f"task tuning: held-out task loss {loss0:.3f} -> {loss1:.3f}; "
              f"next-token KL {kl_t:.4f} (untrained {kl_u:.3f})"]
    assert kl_t < 0.1 and kl_t < 0.05 * kl_u
    for name, (length, words) in OTHER_TASKS.items():
        x = rng.integers(3, 259, size=(64, length))
        sa = _scores(a, test_prompts, x, words)
        st, su = _scores(b, proj_t, x, words), _scores(b, proj_u, x, words)
        gap_t, gap_u = np.abs(st - sa).mean(), np.abs(su - sa).mean()
        agree_t = (st.argmax(-1) == sa.argmax(-1)).mean()
        agree_u = (su.argmax(-1) == sa.argmax(-1)).mean()
        report.append(f"{name}: score gap {gap_t:.3f} (untrained {gap_u:.3f}), "
                      f"agreement {agree_t:.3f} (untrained {agree_u:.3f})")
        assert gap_t < 0.25 * gap_u, (name, gap_t, gap_u)
        assert agree_t >= 0.9 and agree_t >= agree_u, (name, agree_t, agree_u)
    print("; ".join(report))


# ---- 4. bad input ---------------------------------------------------------------------------


def test_projector_refuses_wrong_width_length_and_target(models, tmp_path):
    a, b, _ = models
    proj = pj.Projector.for_backbones(a, b, prompt_length=2, hidden=8)
    with pytest.raises(ConfigError, match=r"width 24 .* width 16 .*'tiny_a'"):
        proj.project(np.zeros((2, 24), np.float32))
    with pytest.raises(ConfigError, match=r"length 3 .* length 2"):
        proj.project(np.zeros((3, D), np.float32))
    other = dataclasses.replace(b, name="some_other_model")
    with pytest.raises(ConfigError, match=r"'tiny_b_rotated'.*'some_other_model'"):
        proj.project(np.zeros((2, D), np.float32), target=other)
    # The refusal survives a save/load round trip (the spec names the target).
    path = proj.save(str(tmp_path / "proj"))
    loaded = pj.Projector.load(path)
    with pytest.raises(ConfigError, match=r"'tiny_b_rotated'.*'some_other_model'"):
        loaded.project(np.zeros((2, D), np.float32), target="some_other_model")
    x = np.random.default_rng(0).normal(size=(3, 2, D)).astype(np.float32)
    np.testing.assert_array_equal(loaded.project(x, target=b), proj.project(x))
    with open(os.path.join(path, pj.SPEC_FILE)) as f:
        meta = json.load(f)["spec"]
    assert (meta["source_backbone"], meta["target_backbone"], meta["d_src"], meta["d_tgt"]) == \
        ("tiny_a", "tiny_b_rotated", D, D)


def _meta(seed):
    return {"init": "random", "steps": 10, "best_score": 0.5, "metric": "accuracy", "seed": seed}


def test_distance_minimizing_names_tasks_without_pairs(tmp_path):
    rng = np.random.default_rng(0)
    for task in ("mr", "trec"):
        bank.write_entry(str(tmp_path), "small", task, "seed0", rng.normal(size=(2, 8)), _meta(0))
    bank.write_entry(str(tmp_path), "big", "mr", "seed0", rng.normal(size=(2, 12)), _meta(0))
    bank.write_entry(str(tmp_path), "big", "sms_spam", "seed0", rng.normal(size=(2, 12)), _meta(0))
    with pytest.raises(ConfigError,
                       match=r"trec \(no prompt on big\); sms_spam \(no prompt on small\)"):
        pj_training.bank_prompt_pairs(str(tmp_path), "small", "big", ["mr", "trec", "sms_spam"])
    pairs = pj_training.bank_prompt_pairs(str(tmp_path), "small", "big", ["mr"])
    assert pairs.source.shape == (1, 2, 8) and pairs.target.shape == (1, 2, 12)


# ---- the commands: train from the bank, apply into the bank, TPT_MODEL -------------------------


def test_cli_distance_train_then_apply_writes_provenance(models, tmp_path, capsys):
    from ptransfer.cli.main import main

    a, b, q = models
    rng = np.random.default_rng(5)
    bank_dir, out = str(tmp_path / "bank"), str(tmp_path / "proj")
    tasks = ["mr", "trec", "sms_spam"]
    for task in tasks:
        for seed in (0, 1):
            p = _prompts(rng, 1, 2)[0]
            bank.write_entry(bank_dir, a.name, task, f"seed{seed}", p, _meta(seed))
            bank.write_entry(bank_dir, b.name, task, f"seed{seed}", p @ q, _meta(seed))
    rc = main(["project", "train", "--gin_file=projector/distance.gin", "--source-backbone", a.name,
               "--target-backbone", b.name, "--tasks", ",".join(tasks), "--bank", bank_dir,
               "--out", out, "--steps", "30", "--hidden", "16",
               "--gin.ptransfer.projector_recipe.log_every=10"])
    assert rc == 0
    loaded = pj.Projector.load(out)
    assert loaded.spec.hidden == 16 and loaded.spec.activation == "tanh"
    assert loaded.summary["objective"] == "distance" and loaded.summary["train_pairs"] == 6
    assert [r["step"] for r in loaded.summary["history"]] == [10, 20, 30]
    # Same output dir again: refused (nothing overwritten) unless --overwrite.
    assert main(["project", "train", "--source-backbone", a.name, "--target-backbone", b.name,
                 "--tasks", "mr", "--bank", bank_dir, "--out", out, "--steps", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    # A task without target prompts: exit 2, the task is named.
    assert main(["project", "train", "--source-backbone", a.name, "--target-backbone", "nobody",
                 "--tasks", "mr", "--bank", bank_dir, "--out", str(tmp_path / "x")]) == 2
    assert "mr (no prompt on nobody)" in capsys.readouterr().err

    assert main(["project", "apply", "--projector", out, "--bank", bank_dir, "--tasks", "trec"]) == 0
    written = bank.list_entries(bank_dir, b.name, "trec")
    projected = [e for e in written if e.meta["init"] == "projected"]
    assert sorted(e.run for e in projected) == ["proj-proj-seed0", "proj-proj-seed1"]
    prompt, meta, _ = bank.read_entry(projected[0].path)
    src_prompt, _, _ = bank.read_entry(bank.find_entry(bank_dir, a.name, "trec", "seed0").path)
    np.testing.assert_array_equal(prompt, loaded.project(src_prompt))
    prov = meta["provenance"]
    assert prov["source_entry"] == f"{a.name}/trec/seed0"
    assert prov["projector"] == os.path.abspath(out) and prov["projector_objective"] == "distance"


def test_task_tuning_from_bank_and_tpt_model(models, tmp_path, assets_dir):
    """The real data path (task `mr` through the trainer's batches) into a target of
    another width, then TPT_MODEL: PT vs PT initialized from the projected prompt."""
    import ptransfer
    from ptransfer.training.trainer import TrainConfig

    a, _, _ = models
    target = ptransfer.load_backbone("preset:llama_tiny")
    bank_dir = str(tmp_path / "bank")
    bank.write_entry(bank_dir, a.name, "mr", "seed0", _prompts(np.random.default_rng(7), 1, 2)[0],
                     _meta(0))
    recipe = pj_training.ProjectorRecipe(hidden=16, batch_size=4, settings=pj_training.TrainSettings(
        objective="task", steps=6, learning_rate=1e-2, log_every=3))
    before = jax.tree_util.tree_map(np.array, target.params)
    proj = cross_model.train_from_bank(bank_dir, a.name, target, ["mr"], recipe, str(tmp_path / "proj"),
                              lengths={"inputs": 32, "targets": 10})
    jax.tree_util.tree_map(np.testing.assert_array_equal, target.params, before)
    assert (proj.spec.d_src, proj.spec.d_tgt, proj.spec.target_backbone) == (D, 64, "llama_tiny")
    assert all(np.isfinite(r["task"]) for r in proj.summary["history"])

    base = TrainConfig(backbone="preset:llama_tiny", task="mr", model_dir=str(tmp_path / "runs"),
                       prompt_length=2, init_from="random", batch_size=4, train_steps=4,
                       eval_every=2, eval_examples=8, input_length=32, target_length=10,
                       checkpoint_every=0, progress=False, bank_dir=bank_dir)
    pair = cross_model.tpt_model(base, str(tmp_path / "proj"), bank_dir, f"{a.name}/mr/seed0", [0],
                        str(tmp_path / "tpt"), backbone=target)
    assert pair["kind"] == "tpt_model" and pair["target"] == "mr"
    assert [s for s, _ in pair["pt"]["curves"]["0"]] == [0, 2, 4]
    assert [s for s, _ in pair["tpt"]["curves"]["0"]] == [0, 2, 4]
    sp = pair["speedups"]["0"]
    assert sp["convergence"] > 0 and "comparable" in sp
    projected, meta, _ = bank.read_entry(pair["projected_entry"])
    assert meta["provenance"]["source_entry"] == f"{a.name}/mr/seed0"
    np.testing.assert_allclose(projected, proj.project(
        bank.find_entry(bank_dir, a.name, "mr", "seed0").read()[0]), atol=1e-6)
