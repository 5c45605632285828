"""Benchmark: one prompt-tuning step, ptransfer vs HF transformers + PEFT, float32 and bfloat16.

    python -m bench.prompt_step [--shapes t5_small,t5_1_1_base,smollm2_135m]
                                [--dtypes float32,bfloat16] [--vs peft]
                                [--steps N] [--threads 2]

For each named shape (`bench.shapes.STEP_SHAPES`) and compute dtype it prints
the median step time with its spread, the process CPU seconds, tokens/s
(prompt + input + target positions per second), GFLOP/s (XLA's FLOP count of
the step, the same arithmetic on both sides) and the worker's peak RSS during
the timed steps. ptransfer runs in one worker process (one jitted step per
dtype; bfloat16 = the precision policy of `ptransfer.backbones.layers`); with
`--vs peft` the identical shape, weights, prompt and batch run in HF + PEFT
(PyTorch CPU) in a second worker: float32, and bfloat16 as
`torch.autocast("cpu", dtype=torch.bfloat16)`. Every timed round runs one step
of each (side, dtype) in turn, each side limited to the same cores
(`--threads`), so a load change on the shared machine hits all alike. It
asserts that no ptransfer step compiles after warm-up and that the frozen
params stay in the same buffers (never copied or donated).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from bench import common, shapes
from bench.worker import Worker

TARGET_RATIO = 0.5          # ptransfer bf16 / PEFT bf16-autocast (and f32 / f32: 0.8)
TARGET_RATIO_F32 = 0.8
TARGET_BF16_SPEEDUP = 3.0   # ptransfer bf16 vs its own f32 step (on a CPU with AMX-BF16)
DTYPES = ("float32", "bfloat16")


def _runs(dtypes, vs_peft):
    """[(side, dtype)] in the order of one timed round."""
    out = []
    for dt in dtypes:
        out.append(("ptransfer", dt))
        if vs_peft:
            out.append(("peft", dt))
    return out


def run_shape(name: str, steps: int, warmup: int, threads: int, vs_peft: bool, seed: int,
              dtypes=DTYPES) -> dict:
    shape = shapes.STEP_SHAPES[name]
    export_dir = tempfile.mkdtemp(prefix=f"bench-{name}-") if vs_peft else None
    jax_w = Worker("bench.jax_side", threads)
    peft_w = Worker("bench.peft_side", threads) if vs_peft else None
    rec = {"shape": name, "batch": shape.batch, "prompt_len": shape.prompt_len,
           "input_len": shape.input_len, "target_len": shape.target_len, "dtypes": list(dtypes),
           "tokens_per_step": shape.tokens_per_step, "load_before": common.load_average()}
    try:
        rec["ptransfer_setup"] = jax_w.call("step_setup", shape=name, seed=seed,
                                            export_dir=export_dir, dtypes=list(dtypes))
        print(f"[{name}] ptransfer loaded {rec['ptransfer_setup']['spec']} "
              f"({rec['ptransfer_setup']['n_params'] / 1e6:.1f}M params) in "
              f"{rec['ptransfer_setup']['load_s']:.1f}s", flush=True)
        if vs_peft:
            rec["peft_setup"] = peft_w.call("step_setup", shape=name, seed=seed,
                                            export=rec["ptransfer_setup"].pop("export"))
        rec["ptransfer_warmup"] = jax_w.call("step_warmup", steps=warmup)
        if vs_peft:
            rec["peft_warmup"] = peft_w.call("step_warmup", steps=warmup,
                                             autocast=[dt != "float32" for dt in dtypes])
        times = {run: [] for run in _runs(dtypes, vs_peft)}
        for _ in range(steps):  # alternate: one step of each run per round
            for side, dt in times:
                if side == "ptransfer":
                    times[side, dt] += jax_w.call("step_run", steps=1, dtype=dt)
                else:
                    times[side, dt] += peft_w.call("step_run", steps=1, autocast=dt != "float32")
        rec["ptransfer_finish"] = fin = jax_w.call("step_finish")
        pfin = peft_w.call("step_finish") if vs_peft else None
        # The same arithmetic on every side: XLA's count of the float32 step's FLOPs.
        rec["flops_per_step"] = flops = rec["ptransfer_warmup"][dtypes[0]]["flops_per_step"]
        rec["runs"] = {}
        for (side, dt), ts in times.items():
            wall = common.summary([t[0] for t in ts])
            cpu = common.summary([t[1] for t in ts])
            r = {"side": side, "dtype": dt, "times_s": [t[0] for t in ts], "cpu_s": [t[1] for t in ts],
                 "wall": wall, "cpu": cpu, "median_s": wall["median"], "median_cpu_s": cpu["median"],
                 "tokens_per_s": shape.tokens_per_step / wall["median"],
                 "gflops_per_s": flops / wall["median"] / 1e9,
                 "loss0": rec[f"{side}_warmup"][dt]["loss0"],
                 "peak_rss_mb": (fin[dt] if side == "ptransfer" else pfin)["peak_rss_mb"]}
            if side == "ptransfer":
                r.update(fin[dt])
                r["param_dtypes"] = rec["ptransfer_warmup"][dt]["param_dtypes"]
                r["prompt_donated"] = rec["ptransfer_warmup"][dt]["prompt_donated"]
            rec["runs"][f"{side}_{dt}"] = r
        rec["ratios"] = _ratios(rec["runs"])
    finally:
        common.close_workers(jax_w, peft_w, scratch_dir=export_dir)
    rec["load_after"] = common.load_average()
    return rec


def _ratios(runs: dict) -> dict:
    """Wall-time (and CPU-time) ratios between the runs present."""
    pairs = {"ptransfer_bf16_over_ptransfer_f32": ("ptransfer_bfloat16", "ptransfer_float32"),
             "ptransfer_f32_over_peft_f32": ("ptransfer_float32", "peft_float32"),
             "ptransfer_bf16_over_peft_bf16": ("ptransfer_bfloat16", "peft_bfloat16"),
             "ptransfer_bf16_over_peft_f32": ("ptransfer_bfloat16", "peft_float32"),
             "peft_bf16_over_peft_f32": ("peft_bfloat16", "peft_float32")}
    out = {}
    for name, (a, b) in pairs.items():
        if a in runs and b in runs:
            out[name] = runs[a]["median_s"] / runs[b]["median_s"]
            out[name + "_cpu"] = runs[a]["median_cpu_s"] / runs[b]["median_cpu_s"]
    return out


def _check(rec: dict) -> list[str]:
    problems = []
    for key, r in rec["runs"].items():
        if r["side"] != "ptransfer":
            continue
        if r["recompiles_after_warmup"] != 0 or r["cache_size_after"] != r["cache_size_warm"]:
            problems.append(f"{rec['shape']} {r['dtype']}: the step recompiled after warm-up "
                            f"({r['recompiles_after_warmup']} backend compiles)")
        if not r["params_same_buffers"]:
            problems.append(f"{rec['shape']} {r['dtype']}: frozen params changed buffers during the run")
    return problems


def _print_rows(rec: dict) -> None:
    for key, r in rec["runs"].items():
        print(f"{rec['shape']:<13} {r['side']:<9} {r['dtype']:<8} {r['median_s'] * 1e3:8.0f} ms "
              f"(min {r['wall']['min'] * 1e3:.0f}, max {r['wall']['max'] * 1e3:.0f}, spread "
              f"{r['wall']['spread'] * 100:.0f}%)  CPU {r['median_cpu_s']:6.2f} s  "
              f"{r['tokens_per_s']:7.0f} tok/s  {r['gflops_per_s']:6.1f} GFLOP/s  "
              f"RSS {r['peak_rss_mb']:6.0f} MiB  loss0 {r['loss0']:.5f}", flush=True)
    targets = {"ptransfer_bf16_over_ptransfer_f32": 1 / TARGET_BF16_SPEEDUP,
               "ptransfer_f32_over_peft_f32": TARGET_RATIO_F32,
               "ptransfer_bf16_over_peft_bf16": TARGET_RATIO}
    for name, v in rec["ratios"].items():
        if name.endswith("_cpu"):
            continue
        t = targets.get(name)
        verdict = "" if t is None else f" ({'meets' if v <= t else 'MISSES'} <= {t:.2f})"
        print(f"{rec['shape']:<13} {name} = {v:.2f} (CPU-s {rec['ratios'][name + '_cpu']:.2f}){verdict}",
              flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(shapes.STEP_SHAPES),
                    help="comma-separated names from: " + ", ".join(shapes.STEP_SHAPES))
    ap.add_argument("--dtypes", default=",".join(DTYPES),
                    help="compute dtypes to time, from: " + ", ".join(DTYPES))
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
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes or any(d not in DTYPES for d in dtypes):
        ap.error(f"--dtypes {args.dtypes!r}: choose from {', '.join(DTYPES)}")
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
    print(f"machine: {common.describe_machine(payload['machine'])}; {args.threads} threads per side",
          flush=True)
    problems = []
    for name in names:
        rec = run_shape(name, args.steps, args.warmup, args.threads, vs_peft, args.seed, dtypes)
        payload["shapes"].append(rec)
        for dt, w in rec["ptransfer_warmup"].items():
            f = rec["ptransfer_finish"][dt]
            print(f"[{name}] {dt}: backend compiles after warm-up {f['recompiles_after_warmup']}, "
                  f"jit cache {f['cache_size_warm']} -> {f['cache_size_after']}; prompt donated: "
                  f"{w['prompt_donated']} ({w['aliased_args']} donated buffers); frozen params same "
                  f"buffers: {f['params_same_buffers']}; param dtypes {w['param_dtypes']}", flush=True)
        print(f"[{name}] {rec['flops_per_step'] / 1e9:.1f} GFLOP per step (XLA cost analysis)", flush=True)
        _print_rows(rec)
        problems += _check(rec)
    payload["load_end"] = common.load_average()
    path = common.write_results("prompt_step", payload, args.out)
    print(f"\nmachine load (1/5/15 min) at end: {payload['load_end']}; results: {path}")
    for rec in payload["shapes"]:
        _print_rows(rec)
    for p in problems:
        print("FAILED:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
