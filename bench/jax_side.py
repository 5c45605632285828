"""The ptransfer (JAX) side of the benchmarks, run as a worker process.

Prompt step: `ptransfer.training.trainer.make_train_step` exactly as the
trainer builds it (AdamW as in the paper's T5 setting, prompt / optimizer
state / RNG donated, frozen params an ordinary argument). Evaluation: the
`Scorer` path (`Backbone.score_candidates`, shared part encoded once) and the
naive per-label method (`bench.naive_scoring`).

Recompilation is counted with `jax.monitoring` (every XLA backend compile
fires BACKEND_COMPILE_EVENT) and the jitted step's own cache size.
"""

from __future__ import annotations

import os
import time

from bench import worker

worker.pin_threads()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import hf_weights, shapes  # noqa: E402
from bench.naive_scoring import naive_score_candidates  # noqa: E402

_COMPILES = [0]


def _on_event(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


def load(spec: str, fallback: str | None = None):
    """(backbone, the spec actually loaded, seconds)."""
    from ptransfer.backbones import load_backbone, resolve_backbone_spec
    from ptransfer.core.errors import CheckpointError

    t0 = time.perf_counter()
    try:
        resolved = resolve_backbone_spec(spec)
    except CheckpointError:
        if fallback is None:
            raise
        spec, resolved = fallback, fallback
    bb = load_backbone(resolved)
    jax.block_until_ready(bb.params)
    return bb, spec, time.perf_counter() - t0


def _n_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def _buffers(params):
    return [x.unsafe_buffer_pointer() for x in jax.tree_util.tree_leaves(params)]


class _StepRun:
    """One compute dtype's prompt-tuning step and its state (prompt, AdamW, RNG)."""

    def __init__(self, bb, batch, prompt, seed: int):
        from ptransfer.training.optimizer import PRESETS, make_optimizer
        from ptransfer.training.trainer import make_train_step

        optimizer = make_optimizer(PRESETS["adamw_t5"])
        self.bb, self.params, self.batch = bb, bb.params, batch
        self.step = make_train_step(bb, optimizer, "token")
        self.prompt = jnp.asarray(prompt)
        self.opt_state = optimizer.init(self.prompt)
        self.rng = jax.random.key_data(jax.random.PRNGKey(seed))

    def one_step(self) -> tuple[float, float, float]:
        """(wall seconds, process CPU seconds, loss) of one step."""
        t0, c0 = time.perf_counter(), time.process_time()
        self.prompt, self.opt_state, self.rng, loss = self.step(
            self.prompt, self.opt_state, self.rng, self.params, self.batch)
        loss = float(loss)  # waits for the step
        jax.block_until_ready(self.prompt)
        return time.perf_counter() - t0, time.process_time() - c0, loss

    def warmup(self, steps: int) -> dict:
        times, _, losses = zip(*[self.one_step() for _ in range(steps)])
        # Donation: the prompt buffer passed in is consumed by the step.
        before = self.prompt
        self.one_step()
        donated = bool(before.is_deleted())
        lowered = self.step.lower(self.prompt, self.opt_state, self.rng, self.params, self.batch)
        text = lowered.as_text()
        cost = lowered.cost_analysis() or {}
        self.cache0 = self.step._cache_size()
        self.buffers0 = _buffers(self.params)
        return {"first_step_s": times[0], "warm_times": list(times[1:]), "loss0": losses[0],
                "flops_per_step": float(cost.get("flops", 0.0)), "prompt_donated": donated,
                "aliased_args": text.count("tf.aliasing_output") + text.count("jax.buffer_donor"),
                "cache_size": self.cache0,
                "param_dtypes": sorted({str(x.dtype) for x in jax.tree_util.tree_leaves(self.params)})}

    def finish(self) -> dict:
        params_in_place = (_buffers(self.params) == self.buffers0 and not any(
            x.is_deleted() for x in jax.tree_util.tree_leaves(self.params)))
        return {"cache_size_after": self.step._cache_size(), "cache_size_warm": self.cache0,
                "params_same_buffers": params_in_place}


class JaxSide:
    # ---- prompt-tuning step ------------------------------------------------

    def step_setup(self, shape: str, seed: int = 0, export_dir: str | None = None,
                   dtypes=("float32",)):
        """Loads the shape's backbone (float32) and builds one step per compute dtype
        in `dtypes` (a low-precision one stores its matmul weights in that dtype)."""
        from ptransfer.backbones import configure_backbone

        s = shapes.STEP_SHAPES[shape]
        bb, spec, load_s = load(s.backbone, s.fallback)
        data = shapes.step_data(s, bb.config.vocab_size, bb.d_model, seed)
        ones = lambda a: np.ones(a.shape, np.int32)  # noqa: E731
        batch = {k: jnp.asarray(v) for k, v in {
            "inputs": data["inputs"], "inputs_mask": ones(data["inputs"]),
            "targets": data["targets"], "targets_mask": ones(data["targets"])}.items()}
        self.runs = {dt: _StepRun(configure_backbone(bb, compute_dtype=dt), batch, data["prompt"], seed)
                     for dt in dtypes}
        out = {"spec": spec, "load_s": load_s, "n_params": _n_params(bb.params),
               "d_model": bb.d_model, "vocab_size": int(bb.config.vocab_size),
               "rss_after_load_mb": worker.rss_mb(), "cores": sorted(os.sched_getaffinity(0))}
        if export_dir:
            out["export"] = hf_weights.export(bb, export_dir)
        out["peak_rss_load_mb"] = worker.peak_rss_mb()
        worker.reset_peak_rss()
        return out

    def step_warmup(self, steps: int = 2):
        """{dtype: warm-up record}; compilation of every dtype's step happens here."""
        out = {dt: run.warmup(steps) for dt, run in self.runs.items()}
        self._compiles0 = _COMPILES[0]
        peak = worker.peak_rss_mb()  # includes compilation
        worker.reset_peak_rss()
        for rec in out.values():
            rec["peak_rss_warmup_mb"] = peak
            rec["compiles_at_warmup"] = self._compiles0
        return out

    def step_run(self, steps: int = 1, dtype: str = "float32"):
        """[[wall s, CPU s] per step] of the `dtype` step."""
        return [list(self.runs[dtype].one_step()[:2]) for _ in range(steps)]

    def step_finish(self):
        """{dtype: checks}; backend compiles after warm-up are counted for the process."""
        new_compiles = _COMPILES[0] - self._compiles0
        out = {}
        for dt, run in self.runs.items():
            out[dt] = run.finish()
            out[dt].update(recompiles_after_warmup=new_compiles, peak_rss_mb=worker.peak_rss_mb(),
                           rss_mb=worker.rss_mb())
        return out

    # ---- rank-classification evaluation -------------------------------------

    def eval_setup(self, model: str, examples: int, batch: int, seed: int = 0,
                   export_dir: str | None = None):
        from ptransfer.scoring import Scorer

        s = shapes.STEP_SHAPES[model]
        bb, spec, load_s = load(s.backbone, s.fallback)
        self.bb, self.params = bb, bb.params
        rng = np.random.default_rng(seed)
        self.inputs = shapes.token_ids(rng, (examples, s.input_len), bb.config.vocab_size)
        self.inputs_mask = np.ones_like(self.inputs)
        self.prompt_np = (rng.standard_normal((s.prompt_len, bb.d_model)) * 0.5).astype(np.float32)
        self.prompt = jnp.asarray(self.prompt_np)
        self.batch_size = batch
        self.scorer = Scorer(bb, batch_size=batch)
        # The same path with the bfloat16 policy (its own bf16 copy of the matmul weights).
        from ptransfer.backbones import configure_backbone

        self.scorer_bf16 = Scorer(configure_backbone(bb, compute_dtype="bfloat16"), batch_size=batch)
        naive = jax.jit(lambda p, pr, x, xm, c, cm: naive_score_candidates(bb, p, pr, x, xm, c, cm))
        self.naive = naive
        self.candidates = {}
        for k, words in shapes.LABEL_SETS.items():
            self.candidates[k] = self._candidates(words)
        out = {"spec": spec, "load_s": load_s, "n_params": _n_params(self.params),
               "prompt_len": s.prompt_len, "input_len": s.input_len,
               "label_tokens": {k: [int(m.sum()) for m in cm] for k, (c, cm) in self.candidates.items()},
               "candidates": {k: c.tolist() for k, (c, cm) in self.candidates.items()},
               "candidates_mask": {k: cm.tolist() for k, (c, cm) in self.candidates.items()},
               "inputs": self.inputs.tolist(), "prompt": self.prompt_np.tolist()}
        if export_dir:
            out["export"] = hf_weights.export(bb, export_dir)
        worker.reset_peak_rss()
        return out

    def _candidates(self, words):
        """[C, Lt] right-padded label-word targets (EOS where the family appends it)."""
        vocab = self.bb.vocab
        seqs = []
        for w in words:
            ids = [int(i) for i in vocab.encode(w)]
            if self.bb.add_eos_to_targets:
                ids.append(int(vocab.eos_id))
            seqs.append(ids)
        lt = max(map(len, seqs))
        c = np.zeros((len(seqs), lt), np.int32)
        m = np.zeros((len(seqs), lt), np.int32)
        for i, ids in enumerate(seqs):
            c[i, :len(ids)], m[i, :len(ids)] = ids, 1
        return c, m

    def _eval_set(self, k, n):
        from types import SimpleNamespace

        from ptransfer.scoring import EvalSet

        c, cm = self.candidates[k]
        return EvalSet(spec=SimpleNamespace(name=f"bench{k}", is_classification=True), split="bench",
                       inputs=self.inputs[:n], inputs_mask=self.inputs_mask[:n], candidates=c,
                       candidates_mask=cm)

    def eval_run(self, method: str, labels: int, examples: int | None = None):
        """Scores the first `examples` (None: all) for the label set of size `labels`.

        Returns {"seconds", "scores" [N, C], "compiles" (XLA compiles during the call)}."""
        k = int(labels)
        n = len(self.inputs) if examples is None else int(examples)
        compiles0 = _COMPILES[0]
        t0 = time.perf_counter()
        if method == "optimized":  # the evaluation path the trainer uses
            scores = self.scorer.candidate_log_likelihoods(self.prompt, self._eval_set(k, n))
        elif method == "optimized_bf16":
            scores = self.scorer_bf16.candidate_log_likelihoods(self.prompt, self._eval_set(k, n))
        elif method == "naive":
            c, cm = (jnp.asarray(a) for a in self.candidates[k])
            parts = []
            for start in range(0, n, self.batch_size):
                stop = min(start + self.batch_size, n)
                x, xm = jnp.asarray(self.inputs[start:stop]), jnp.asarray(self.inputs_mask[start:stop])
                parts.append(np.asarray(self.naive(self.params, self.prompt, x, xm, c, cm)))
            scores = np.concatenate(parts)
        else:
            raise ValueError(method)
        return {"seconds": time.perf_counter() - t0, "scores": np.asarray(scores).tolist(),
                "compiles": _COMPILES[0] - compiles0}

    def eval_finish(self):
        return {"peak_rss_mb": worker.peak_rss_mb()}


if __name__ == "__main__":
    worker.serve(JaxSide())
