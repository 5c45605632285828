"""Benchmark: one prompt-tuning step, ptransfer vs HF transformers + PEFT.

    python -m bench.prompt_step [--shapes t5_small,t5_1_1_base,smollm2_135m]
                                [--vs peft] [--steps N] [--threads 2]

For each named shape (`bench.shapes.STEP_SHAPES`) it prints the median step
time, tokens/s (prompt + input + target positions per second) and the
worker's peak RSS during the timed steps (the JSON also has the RSS after
loading and the peak during warm-up, which includes compilation). ptransfer runs in one worker process; with `--vs peft` the
identical shape, weights, prompt and batch run in HF + PEFT (PyTorch CPU) in a
second worker, in the same invocation, one step on each side in turn, each
side limited to the same cores (`--threads`). It asserts that the ptransfer
step compiles nowhere after warm-up and that the frozen params stay in the
same buffers (never copied or donated), and prints the ratio ptransfer/PEFT.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from bench import common, shapes
from bench.worker import Worker

TARGET_RATIO = 0.5


def run_shape(name: str, steps: int, warmup: int, threads: int, vs_peft: bool, seed: int) -> dict:
    shape = shapes.STEP_SHAPES[name]
    export_dir = tempfile.mkdtemp(prefix=f"bench-{name}-") if vs_peft else None
    jax_w = Worker("bench.jax_side", threads)
    peft_w = Worker("bench.peft_side", threads) if vs_peft else None
    rec = {"shape": name, "batch": shape.batch, "prompt_len": shape.prompt_len,
           "input_len": shape.input_len, "target_len": shape.target_len,
           "tokens_per_step": shape.tokens_per_step, "load_before": common.load_average()}
    try:
        rec["ptransfer_setup"] = jax_w.call("step_setup", shape=name, seed=seed, export_dir=export_dir)
        print(f"[{name}] ptransfer loaded {rec['ptransfer_setup']['spec']} "
              f"({rec['ptransfer_setup']['n_params'] / 1e6:.1f}M params) in "
              f"{rec['ptransfer_setup']['load_s']:.1f}s", flush=True)
        if vs_peft:
            rec["peft_setup"] = peft_w.call("step_setup", shape=name, seed=seed,
                                            export=rec["ptransfer_setup"].pop("export"))
        rec["ptransfer_warmup"] = jax_w.call("step_warmup", steps=warmup)
        if vs_peft:
            rec["peft_warmup"] = peft_w.call("step_warmup", steps=warmup)
        jt, pt = [], []
        for _ in range(steps):  # alternate: one step each, so drifting load hits both alike
            jt += jax_w.call("step_run", steps=1)
            if vs_peft:
                pt += peft_w.call("step_run", steps=1)
        rec["ptransfer_finish"] = fin = jax_w.call("step_finish")
        rec["ptransfer_times_s"] = [t[0] for t in jt]
        rec["ptransfer_cpu_s"] = [t[1] for t in jt]
        rec["ptransfer_median_s"] = common.median(rec["ptransfer_times_s"])
        rec["ptransfer_median_cpu_s"] = common.median(rec["ptransfer_cpu_s"])
        rec["ptransfer_tokens_per_s"] = shape.tokens_per_step / rec["ptransfer_median_s"]
        rec["ptransfer_peak_rss_mb"] = fin["peak_rss_mb"]
        # The same arithmetic on both sides: XLA's count of the step's FLOPs.
        rec["flops_per_step"] = flops = rec["ptransfer_warmup"]["flops_per_step"]
        rec["ptransfer_gflops_per_s"] = flops / rec["ptransfer_median_s"] / 1e9
        rec["recompiles_after_warmup"] = fin["recompiles_after_warmup"]
        rec["params_same_buffers"] = fin["params_same_buffers"]
        rec["prompt_donated"] = rec["ptransfer_warmup"]["prompt_donated"]
        if vs_peft:
            pfin = peft_w.call("step_finish")
            rec["peft_times_s"] = [t[0] for t in pt]
            rec["peft_cpu_s"] = [t[1] for t in pt]
            rec["peft_median_s"] = common.median(rec["peft_times_s"])
            rec["peft_median_cpu_s"] = common.median(rec["peft_cpu_s"])
            rec["cpu_ratio_ptransfer_over_peft"] = (rec["ptransfer_median_cpu_s"]
                                                    / rec["peft_median_cpu_s"])
            rec["peft_tokens_per_s"] = shape.tokens_per_step / rec["peft_median_s"]
            rec["peft_peak_rss_mb"] = pfin["peak_rss_mb"]
            rec["peft_gflops_per_s"] = flops / rec["peft_median_s"] / 1e9
            rec["ratio_ptransfer_over_peft"] = rec["ptransfer_median_s"] / rec["peft_median_s"]
            rec["loss0_ptransfer"] = rec["ptransfer_warmup"]["loss0"]
            rec["loss0_peft"] = rec["peft_warmup"]["loss0"]
    finally:
        common.close_workers(jax_w, peft_w, scratch_dir=export_dir)
    rec["load_after"] = common.load_average()
    return rec


def _check(rec: dict) -> list[str]:
    problems = []
    if rec["recompiles_after_warmup"] != 0 or \
            rec["ptransfer_finish"]["cache_size_after"] != rec["ptransfer_finish"]["cache_size_warm"]:
        problems.append(f"{rec['shape']}: the step recompiled after warm-up "
                        f"({rec['recompiles_after_warmup']} backend compiles)")
    if not rec["params_same_buffers"]:
        problems.append(f"{rec['shape']}: frozen params changed buffers during the run")
    return problems


def _print_row(rec: dict) -> None:
    line = (f"{rec['shape']:<13} ptransfer {rec['ptransfer_median_s'] * 1e3:8.0f} ms "
            f"{rec['ptransfer_tokens_per_s']:8.0f} tok/s  RSS {rec['ptransfer_peak_rss_mb']:6.0f} MiB")
    if "peft_median_s" in rec:
        ok = "meets" if rec["ratio_ptransfer_over_peft"] <= TARGET_RATIO else "MISSES"
        line += (f" | PEFT {rec['peft_median_s'] * 1e3:8.0f} ms {rec['peft_tokens_per_s']:8.0f} tok/s"
                 f"  RSS {rec['peft_peak_rss_mb']:6.0f} MiB | ratio {rec['ratio_ptransfer_over_peft']:.2f}"
                 f" ({ok} <= {TARGET_RATIO}); CPU-s ratio {rec['cpu_ratio_ptransfer_over_peft']:.2f}")
    print(line, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(shapes.STEP_SHAPES),
                    help="comma-separated names from: " + ", ".join(shapes.STEP_SHAPES))
    ap.add_argument("--vs", choices=["peft"], default=None,
                    help="also run HF transformers + PEFT (needs the `bench` extra)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    ap.add_argument("--threads", type=int, default=2, help="cores each side may use")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/...)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.shapes.split(",") if n.strip()]
    unknown = [n for n in names if n not in shapes.STEP_SHAPES]
    if unknown:
        ap.error(f"unknown shape(s) {unknown}; choose from {list(shapes.STEP_SHAPES)}")
    if args.steps < 1 or args.warmup < 1:
        ap.error("--steps and --warmup must be >= 1")
    vs_peft = args.vs == "peft"
    if vs_peft:
        try:
            import peft  # noqa: F401
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as e:
            print(f"--vs peft needs the bench extra: pip install -e '.[bench]' ({e})", file=sys.stderr)
            return 2

    command = " ".join(["python -m bench.prompt_step"] + (sys.argv[1:] if argv is None else list(argv)))
    payload = {"benchmark": "prompt_step", "machine": common.machine(), "threads": args.threads,
               "steps": args.steps, "warmup": args.warmup, "command": command, "shapes": []}
    print(f"machine: {payload['machine']['cpu']} ({payload['machine']['cores']} cores), "
          f"load {common.load_average()}, {args.threads} threads per side", flush=True)
    problems = []
    for name in names:
        rec = run_shape(name, args.steps, args.warmup, args.threads, vs_peft, args.seed)
        payload["shapes"].append(rec)
        w = rec["ptransfer_warmup"]
        print(f"[{name}] no recompilation after warm-up: backend compiles {rec['recompiles_after_warmup']}, "
              f"jit cache {rec['ptransfer_finish']['cache_size_warm']} -> "
              f"{rec['ptransfer_finish']['cache_size_after']}; prompt donated: {w['prompt_donated']} "
              f"({w['aliased_args']} donated buffers); frozen params same buffers: "
              f"{rec['params_same_buffers']}", flush=True)
        print(f"[{name}] {rec['flops_per_step'] / 1e9:.1f} GFLOP per step (XLA cost analysis): "
              f"ptransfer {rec['ptransfer_gflops_per_s']:.1f} GFLOP/s"
              + (f", PEFT {rec['peft_gflops_per_s']:.1f} GFLOP/s" if vs_peft else ""), flush=True)
        if vs_peft:
            print(f"[{name}] first-step loss ptransfer {rec['loss0_ptransfer']:.5f} vs PEFT "
                  f"{rec['loss0_peft']:.5f}", flush=True)
        _print_row(rec)
        problems += _check(rec)
    payload["load_end"] = common.load_average()
    path = common.write_results("prompt_step", payload, args.out)
    print(f"\nmachine load (1/5/15 min) at end: {payload['load_end']}; results: {path}")
    for rec in payload["shapes"]:
        _print_row(rec)
    for p in problems:
        print("FAILED:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
