"""Benchmark: rank-classification evaluation, optimized vs naive vs PEFT-style.

    python -m bench.eval [--models t5_small,smollm2_135m] [--examples 32]
                         [--batch 8] [--reps 3] [--no-peft] [--threads 2]

For 2, 3 and 6 label words it measures examples/s of
  optimized  ptransfer's evaluation path (`Scorer` -> `Backbone.score_candidates`):
             T5: the encoder runs once per example and all labels are decoded in
             one batched call; decoder-only: one pass over prompt + input, then
             every label continuation from the cached keys/values;
  optimized_bf16  the same path under the bfloat16 precision policy (bf16 matmul
             operands, f32 accumulation and activations); its predictions'
             agreement with float32 is reported;
  naive      each input repeated once per label word through the teacher-forced
             likelihood (`bench.naive_scoring`), as T5X and most codebases do;
  peft       HF transformers + PEFT prompt tuning, one forward with `labels` per
             label word (PyTorch CPU, separate worker, same weights and prompt).
Scores of the three methods are compared (identical predictions, max |diff|
printed and bounded); the methods alternate within each repetition.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np

from bench import common, shapes
from bench.worker import Worker

TARGET_SPEEDUP = 2.0       # optimized vs naive, 3 labels
SAME_FRAMEWORK_ATOL = 1e-3  # |optimized - naive| on summed log-likelihoods (float32)
CROSS_FRAMEWORK_ATOL = 5e-3  # |optimized - PEFT|
JAX_METHODS = ("optimized", "naive", "optimized_bf16")


def _compare(a, b) -> dict:
    a, b = np.asarray(a), np.asarray(b)
    return {"max_abs_diff": float(np.max(np.abs(a - b))),
            "same_predictions": bool(np.array_equal(a.argmax(-1), b.argmax(-1)))}


def run_model(model: str, examples: int, batch: int, reps: int, threads: int, with_peft: bool,
              seed: int) -> dict:
    export_dir = tempfile.mkdtemp(prefix=f"bench-eval-{model}-") if with_peft else None
    jax_w = Worker("bench.jax_side", threads)
    peft_w = Worker("bench.peft_side", threads) if with_peft else None
    rec = {"model": model, "examples": examples, "batch": batch, "reps": reps,
           "load_before": common.load_average(), "labels": {}}
    try:
        setup = jax_w.call("eval_setup", model=model, examples=examples, batch=batch, seed=seed,
                           export_dir=export_dir)
        rec["spec"], rec["n_params"] = setup["spec"], setup["n_params"]
        rec["prompt_len"], rec["input_len"] = setup["prompt_len"], setup["input_len"]
        print(f"[{model}] {setup['spec']} ({setup['n_params'] / 1e6:.1f}M params), prompt "
              f"{setup['prompt_len']} + input {setup['input_len']}, {examples} examples, batch "
              f"{batch}; label tokens {setup['label_tokens']}", flush=True)
        if with_peft:
            peft_w.call("eval_setup", export=setup["export"], inputs=setup["inputs"],
                        prompt=setup["prompt"], candidates=setup["candidates"],
                        candidates_mask=setup["candidates_mask"], batch=batch)
        for k in shapes.LABEL_SETS:
            # Warm-up on one batch: compiles each jitted path for this label set.
            for method in JAX_METHODS:
                jax_w.call("eval_run", method=method, labels=k, examples=batch)
            if with_peft:
                peft_w.call("eval_run", labels=k, examples=batch)
            times = {m: [] for m in JAX_METHODS + ("peft",)}
            compiles = 0
            scores = {}
            for _ in range(reps):  # alternate the methods within each repetition
                for method in JAX_METHODS:
                    r = jax_w.call("eval_run", method=method, labels=k)
                    times[method].append(r["seconds"])
                    compiles += r["compiles"]
                    scores[method] = r["scores"]
                opt_scores, naive_scores = scores["optimized"], scores["naive"]
                if with_peft:
                    r = peft_w.call("eval_run", labels=k)
                    times["peft"].append(r["seconds"])
                    peft_scores = r["scores"]
            lk = {"label_words": list(shapes.LABEL_SETS[k]), "label_tokens": setup["label_tokens"][str(k)],
                  "times_s": {m: t for m, t in times.items() if t}, "recompiles_after_warmup": compiles}
            for m, t in lk["times_s"].items():
                lk[f"{m}_examples_per_s"] = examples / common.median(t)
            lk["speedup_vs_naive"] = lk["optimized_examples_per_s"] / lk["naive_examples_per_s"]
            lk["vs_naive"] = _compare(opt_scores, naive_scores)
            lk["bf16_speedup"] = lk["optimized_bf16_examples_per_s"] / lk["optimized_examples_per_s"]
            lk["bf16_vs_f32"] = _compare(scores["optimized_bf16"], opt_scores)
            lk["bf16_vs_f32"]["agreement"] = float(np.mean(
                np.argmax(scores["optimized_bf16"], -1) == np.argmax(opt_scores, -1)))
            if with_peft:
                lk["speedup_vs_peft"] = lk["optimized_examples_per_s"] / lk["peft_examples_per_s"]
                lk["vs_peft"] = _compare(opt_scores, peft_scores)
            rec["labels"][k] = lk
            _print_row(model, k, lk)
        rec["ptransfer_peak_rss_mb"] = jax_w.call("eval_finish")["peak_rss_mb"]
        if with_peft:
            rec["peft_peak_rss_mb"] = peft_w.call("eval_finish")["peak_rss_mb"]
    finally:
        common.close_workers(jax_w, peft_w, scratch_dir=export_dir)
    rec["load_after"] = common.load_average()
    return rec


def _print_row(model: str, k: int, lk: dict) -> None:
    line = (f"{model:<13} {k} labels: optimized {lk['optimized_examples_per_s']:7.2f} ex/s | naive "
            f"{lk['naive_examples_per_s']:7.2f} ex/s (x{lk['speedup_vs_naive']:.2f}, max|diff| "
            f"{lk['vs_naive']['max_abs_diff']:.1e}) | bf16 {lk['optimized_bf16_examples_per_s']:7.2f} "
            f"ex/s (x{lk['bf16_speedup']:.2f} vs f32, agreement {lk['bf16_vs_f32']['agreement']:.3f}, "
            f"max|diff| {lk['bf16_vs_f32']['max_abs_diff']:.1e})")
    if "peft_examples_per_s" in lk:
        line += (f" | PEFT {lk['peft_examples_per_s']:7.2f} ex/s (x{lk['speedup_vs_peft']:.2f}, "
                 f"max|diff| {lk['vs_peft']['max_abs_diff']:.1e})")
    print(line, flush=True)


def _check(rec: dict) -> list[str]:
    problems = []
    for k, lk in rec["labels"].items():
        where = f"{rec['model']} {k} labels"
        if lk["recompiles_after_warmup"]:
            problems.append(f"{where}: {lk['recompiles_after_warmup']} compiles after warm-up")
        if not lk["vs_naive"]["same_predictions"] or lk["vs_naive"]["max_abs_diff"] > SAME_FRAMEWORK_ATOL:
            problems.append(f"{where}: optimized and naive scores differ {lk['vs_naive']}")
        if "vs_peft" in lk and (not lk["vs_peft"]["same_predictions"]
                                or lk["vs_peft"]["max_abs_diff"] > CROSS_FRAMEWORK_ATOL):
            problems.append(f"{where}: ptransfer and PEFT scores differ {lk['vs_peft']}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="t5_small,smollm2_135m",
                    help="comma-separated shapes from: " + ", ".join(shapes.STEP_SHAPES))
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8, help="examples per call")
    ap.add_argument("--reps", type=int, default=3, help="timed passes per method (median)")
    ap.add_argument("--no-peft", action="store_true", help="skip the PEFT-style scoring")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in shapes.STEP_SHAPES]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(shapes.STEP_SHAPES)}")
    if args.examples < 1 or args.batch < 1 or args.reps < 1:
        ap.error("--examples, --batch and --reps must be >= 1")
    with_peft = not args.no_peft
    if with_peft:
        try:
            import peft  # noqa: F401
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            print("torch/transformers/peft not installed (the `bench` extra); PEFT-style scoring "
                  "skipped.", file=sys.stderr)
            with_peft = False

    command = " ".join(["python -m bench.eval"] + (sys.argv[1:] if argv is None else list(argv)))
    payload = {"benchmark": "eval", "machine": common.machine(), "threads": args.threads,
               "command": command, "models": []}
    print(f"machine: {common.describe_machine(payload['machine'])}; {args.threads} threads per side",
          flush=True)
    problems = []
    for model in models:
        rec = run_model(model, args.examples, args.batch, args.reps, args.threads, with_peft, args.seed)
        payload["models"].append(rec)
        problems += _check(rec)
    payload["load_end"] = common.load_average()
    path = common.write_results("eval", payload, args.out)
    print(f"\nmachine load (1/5/15 min) at end: {payload['load_end']}; results: {path}")
    for rec in payload["models"]:
        for k, lk in rec["labels"].items():
            _print_row(rec["model"], k, lk)
        three = rec["labels"].get(3)
        if three:
            ok = "meets" if three["speedup_vs_naive"] >= TARGET_SPEEDUP else "MISSES"
            print(f"{rec['model']}: 3-label speedup vs naive x{three['speedup_vs_naive']:.2f} "
                  f"({ok} >= {TARGET_SPEEDUP})")
    for p in problems:
        print("FAILED:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
