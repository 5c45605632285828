"""Length buckets: batches lose only padding columns, scores do not change, and
the number of compiled shapes is bounded by the bucket count."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ptransfer import data
from ptransfer.backbones import load_backbone


def _batch(rng, real_inputs, real_targets, li=12, lt=4, vocab=250):
    """Left-padded inputs / right-padded targets with the given real lengths per row."""
    b = len(real_inputs)
    x, xm = np.zeros((b, li), np.int32), np.zeros((b, li), np.int32)
    y, ym = np.zeros((b, lt), np.int32), np.zeros((b, lt), np.int32)
    for i, (n, m) in enumerate(zip(real_inputs, real_targets)):
        x[i, li - n:], xm[i, li - n:] = rng.integers(3, vocab, n), 1
        y[i, :m], ym[i, :m] = rng.integers(3, vocab, m), 1
    return {"inputs": x, "inputs_mask": xm, "targets": y, "targets_mask": ym,
            "label": np.arange(b, dtype=np.int32)}


def test_bucket_lengths():
    assert data.bucket_lengths(40) == (10, 20, 30, 40)
    assert data.bucket_lengths(6, 4) == (2, 4, 6)
    assert data.bucket_lengths(5, 1) == (5,)


def test_trim_keeps_every_real_token():
    rng = np.random.default_rng(0)
    batch = _batch(rng, [2, 5, 3], [1, 2, 1])
    out = data.trim_to_bucket(batch)
    assert out["inputs"].shape == (3, 6) and out["targets"].shape == (3, 2)  # buckets of 12: 3,6,9,12
    for k in ("inputs", "inputs_mask"):
        np.testing.assert_array_equal(out[k], batch[k][:, -6:])
    assert out["inputs_mask"].sum() == batch["inputs_mask"].sum()
    assert out["targets_mask"].sum() == batch["targets_mask"].sum()
    np.testing.assert_array_equal(out["label"], batch["label"])
    full = _batch(rng, [12, 1], [4, 1])
    assert data.trim_to_bucket(full)["inputs"].shape == (2, 12)  # nothing to cut


@pytest.mark.parametrize("preset", ["llama_tiny", "t5_tiny"])
def test_trimmed_batch_scores_equal_full_batch(preset):
    bb = load_backbone(f"preset:{preset}")
    rng = np.random.default_rng(1)
    batch = _batch(rng, [2, 5, 3], [1, 2, 2] if bb.add_eos_to_targets else [1, 2, 1])
    keys = data.BATCH_KEYS
    prompt = (rng.standard_normal((3, bb.d_model)) * 0.5).astype(np.float32)
    ll = jax.jit(bb.target_log_likelihood)
    full = np.asarray(ll(bb.params, prompt, {k: batch[k] for k in keys}))
    trimmed = data.trim_to_bucket({k: batch[k] for k in keys})
    assert trimmed["inputs"].shape[1] < batch["inputs"].shape[1]
    cut = np.asarray(ll(bb.params, prompt, trimmed))
    np.testing.assert_allclose(cut, full, rtol=1e-5, atol=1e-5)


def test_scorer_compiles_one_shape_per_bucket():
    from types import SimpleNamespace

    from ptransfer.scoring import EvalSet, Scorer

    bb = load_backbone("preset:llama_tiny")
    rng = np.random.default_rng(2)
    lengths = [1, 2, 4, 5, 7, 9, 11, 12, 3, 6, 8, 10]
    batch = _batch(rng, lengths, [1] * len(lengths))
    cands = np.array([[5], [6]], np.int32)
    spec = SimpleNamespace(name="buckets", is_classification=True)
    scorer = Scorer(bb, batch_size=2)
    es = EvalSet(spec=spec, split="x", inputs=batch["inputs"], inputs_mask=batch["inputs_mask"],
                 candidates=cands, candidates_mask=np.ones_like(cands))
    scores = scorer.candidate_log_likelihoods(None, es)
    # Six batches of two, four input buckets (3, 6, 9, 12): at most four shapes compile.
    assert scorer._score._cache_size() <= len(data.bucket_lengths(12))
    expect = np.asarray(bb.score_candidates(bb.params, None, batch["inputs"], batch["inputs_mask"],
                                            cands, np.ones_like(cands)))
    np.testing.assert_allclose(scores, expect, rtol=1e-5, atol=1e-5)


def test_training_trims_to_the_runs_bucket_count(tmp_path, monkeypatch):
    """TRAIN_LENGTH_BUCKETS=1 keeps every training batch at [B, INPUT_LENGTH] /
    [B, TARGET_LENGTH] (one step shape); the default trims the tiny task's short
    texts. The two runs' prompts agree: trimming only drops padding."""
    from _trainer_common import register_tiny_yesno, write_justice

    from ptransfer.training import trainer as trainer_module

    data_dir = write_justice(str(tmp_path / "data"))
    name = register_tiny_yesno(monkeypatch)
    shapes = []
    real_trim = data.trim_to_bucket

    def recording_trim(batch, buckets=data.LENGTH_BUCKETS):
        out = real_trim(batch, buckets)
        shapes.append((out["inputs"].shape[1], out["targets"].shape[1]))
        return out

    monkeypatch.setattr(trainer_module.data, "trim_to_bucket", recording_trim)
    finals = {}
    for buckets in (1, data.LENGTH_BUCKETS):
        shapes.clear()
        bb = load_backbone("preset:llama_tiny")  # its own compile cache
        cfg = trainer_module.TrainConfig(
            backbone="preset:llama_tiny", task=name, model_dir=str(tmp_path / f"run{buckets}"),
            prompt_length=3, init_from="random", batch_size=4, train_steps=3,
            input_length=24, target_length=8, length_buckets=buckets, eval_every=0,
            eval_at_start=False, eval_split="train", eval_examples=None, data_dir=data_dir,
            progress=False)
        result = trainer_module.Trainer(cfg, backbone=bb).run()
        finals[buckets] = result.final_prompt
        assert len(shapes) == 3
        if buckets == 1:
            assert set(shapes) == {(24, 8)}
        else:
            assert all(li < 24 and lt < 8 for li, lt in shapes)
    np.testing.assert_allclose(finals[1], finals[data.LENGTH_BUCKETS], rtol=1e-4, atol=1e-5)


def test_a_bucket_count_below_one_is_refused(tmp_path):
    from ptransfer.core.errors import ConfigError
    from ptransfer.training.trainer import TrainConfig

    cfg = TrainConfig(backbone="preset:llama_tiny", task="mr", model_dir=str(tmp_path),
                      prompt_length=3, init_from="random", batch_size=4, train_steps=3,
                      length_buckets=0)
    with pytest.raises(ConfigError, match="TRAIN_LENGTH_BUCKETS"):
        cfg.validate()
