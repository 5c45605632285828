"""Benchmark: a 40-step prompt-tuning run in float32 and in bfloat16, scores with intervals.

    python -m bench.dtype_runs [--backbone smollm2|gemma3] [--tasks mr]
        [--steps 40] [--eval-examples 128] [--out bench/results/dtype_runs]

Each run is the demo's base run (`experiments/demo.gin`: the real GGUF model,
prompt 20, batch 8, AdamW, the demo's learning rate and loss) with only
COMPUTE_DTYPE changed (None: float32; 'bfloat16': bf16 matmul operands, f32
accumulation and activations, weights stored once in bf16). Both evaluate the
same stratified validation subset. For each task it records each dtype's final
and best score with its 95% interval (bootstrap over the examples, from the
run's metrics.jsonl), the wall time, and the verdict *agree* when each final
score lies inside the other's interval. Resumable: a finished run's record
`<out>/<tag>.json` is reused.
"""

from __future__ import annotations

import argparse
import json
import os

from bench.common import load_average, machine
from bench.protocol_sweep import BACKBONES, _train, _write

DTYPES = {"float32": "None", "bfloat16": "'bfloat16'"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="smollm2", choices=sorted(BACKBONES))
    ap.add_argument("--tasks", default="mr")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-examples", type=int, default=128)
    ap.add_argument("--out", default="bench/results/dtype_runs")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    rows = []
    for task in [t for t in args.tasks.split(",") if t]:
        recs = {}
        for dtype, binding in DTYPES.items():
            tag = f"{args.backbone}-{task}-{dtype}-{args.steps}"
            path = os.path.join(out, f"{tag}.json")
            if not os.path.exists(path):
                cfg, result = _train([
                    f"BACKBONE={BACKBONES[args.backbone]}", f"TASK='{task}'",
                    f"MODEL_DIR='{os.path.join(out, 'runs', tag)}'",
                    f"TRAIN_STEPS={args.steps}", f"EVAL_EXAMPLES={args.eval_examples}",
                    f"EVAL_EVERY={args.steps // 4}", f"CHECKPOINT_EVERY={args.steps}",
                    f"COMPUTE_DTYPE={binding}",
                    f"ptransfer.TrainConfig.bank_dir='{os.path.join(out, 'bank')}'",
                    f"ptransfer.TrainConfig.run_name='{tag}'"])
                metric = result.metric
                ci = f"{metric}_ci"
                final = result.curve[-1]
                best = max(result.curve, key=lambda r: r[metric])
                _write(path, {"task": task, "dtype": dtype, "metric": metric,
                              "eval_examples": cfg.eval_examples, "steps": args.steps,
                              "final": final[metric], "final_ci": final.get(ci),
                              "final_step": final["step"], "best": best[metric],
                              "best_ci": best.get(ci), "best_step": best["step"],
                              "seconds": round(result.wall_time_s, 1),
                              "machine": machine(), "load_average_end": load_average()})
            recs[dtype] = json.load(open(path))
        a, b = recs["float32"], recs["bfloat16"]
        agree = (a["final_ci"][0] <= b["final"] <= a["final_ci"][1]
                 and b["final_ci"][0] <= a["final"] <= b["final_ci"][1])
        rows.append({"task": task, "records": recs, "agree": bool(agree),
                     "bf16_time_ratio": b["seconds"] / a["seconds"]})
    _write(os.path.join(out, "summary.json"), {"rows": rows, "machine": machine()})
    for r in rows:
        for dtype, rec in r["records"].items():
            lo, hi = rec["final_ci"]
            print(f"{r['task']:10s} {dtype:9s} final {rec['final']:5.1f} [{lo:5.1f}, {hi:5.1f}] "
                  f"best {rec['best']:5.1f} @ {rec['best_step']:3d}  {rec['seconds']:6.1f} s")
        print(f"{r['task']:10s} verdict: {'agree' if r['agree'] else 'differ'} "
              f"(bf16 / f32 wall time {r['bf16_time_ratio']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
