"""Prompt tuning the real SmolLM2-135M on `mr`: tuned prompt vs no prompt.

    python -m bench.prompt_tune_smollm2 [--steps 150] [--batch 8] [--prompt-length 20]
        [--lr 3e-3] [--optimizer adamw_t5] [--init vocab] [--eval-examples 256]
        [--eval-every 50] [--out DIR]

The real pretrained SmolLM2-135M-Instruct (GGUF from the asset cache,
`ptransfer assets fetch`), frozen; only the prompt trains. The run goes
through the same gin files and Trainer as `ptransfer train`
(models/smollm2_135m.gin + runs/prompt_tune.gin with the settings below as
--gin overrides). Scores are on a FIXED validation subset (the first
`--eval-examples` examples of mr's validation split, in stored order): the
frozen model with no prompt, then the tuned prompt every `--eval-every`
steps; the bank entry exports the best of them. Writes
bench/results/prompt_tune_smollm2-<date>.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from bench.common import load_average, machine, write_results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="mr")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-length", type=int, default=20)
    ap.add_argument("--optimizer", default="adamw_t5")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--init", default="vocab")
    ap.add_argument("--input-length", type=int, default=64)
    ap.add_argument("--eval-examples", type=int, default=256)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="model dir (default: a temp dir, deleted)")
    args = ap.parse_args(argv)

    import tasks
    from ptransfer import scoring
    from ptransfer.backbones import load_backbone, resolve_backbone_spec
    from ptransfer.cli import gin_setup
    from ptransfer.data import default_truncation, load_task
    from ptransfer.training.trainer import Trainer, build_train_config

    model_dir = args.out or tempfile.mkdtemp(prefix="pt_smollm2_")
    bindings = [f"TASK={args.task}", f"MODEL_DIR={model_dir}", f"TRAIN_STEPS={args.steps}",
                f"BATCH_SIZE={args.batch}", f"PROMPT_LENGTH={args.prompt_length}",
                f"OPTIMIZER={args.optimizer}", f"LEARNING_RATE={args.lr}",
                f"INIT_FROM={args.init}", f"INPUT_LENGTH={args.input_length}",
                "TARGET_LENGTH=4", f"EVAL_EXAMPLES={args.eval_examples}",
                f"EVAL_EVERY={args.eval_every}", f"CHECKPOINT_EVERY={args.eval_every}",
                f"SEED={args.seed}"]
    gin_setup.parse_gin(["models/smollm2_135m.gin", "runs/prompt_tune.gin"], bindings)
    cfg = build_train_config()

    t0 = time.perf_counter()
    bb = load_backbone(resolve_backbone_spec(cfg.backbone))
    load_s = time.perf_counter() - t0

    # No prompt, on exactly the examples the trainer evaluates.
    t0 = time.perf_counter()
    task, mlm = load_task(cfg.task, bb, cfg.data_dir)
    eval_set = scoring.build_eval_set(
        task, tasks.get_spec(cfg.task), bb, cfg.eval_split, cfg.eval_examples,
        {"inputs": cfg.input_length, "targets": cfg.target_length},
        truncate_inputs=default_truncation(bb), mlm=mlm)
    no_prompt = scoring.Scorer(bb, batch_size=cfg.batch_size).evaluate(None, eval_set)
    no_prompt_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = Trainer(cfg, backbone=bb).run()
    train_s = time.perf_counter() - t0
    best = max(result.curve, key=lambda r: r[result.metric])

    payload = {
        "machine": machine(), "load_average_end": load_average(),
        "backbone": bb.name, "task": cfg.task, "eval_split": cfg.eval_split,
        "eval_examples": eval_set.size, "settings": {
            "steps": cfg.train_steps, "batch_size": cfg.batch_size,
            "prompt_length": cfg.prompt_length, "init": cfg.init_from,
            "optimizer": cfg.optimizer.to_dict(), "input_length": cfg.input_length,
            "target_length": cfg.target_length, "eval_every": cfg.eval_every, "seed": cfg.seed,
            "loss_normalization": cfg.loss_normalization},
        "no_prompt": no_prompt, "tuned_best": best, "tuned_final": result.curve[-1],
        "curve": result.curve, "selection_metric": result.metric,
        "seconds": {"load_backbone": round(load_s, 1), "no_prompt_eval": round(no_prompt_s, 1),
                    "train_with_evals": round(train_s, 1)},
        "train_examples_per_s": result.train_examples_per_s,
    }
    path = write_results("prompt_tune_smollm2", payload)
    print(f"{bb.name} on {cfg.task} ({eval_set.size} validation examples), {cfg.train_steps} "
          f"steps x batch {cfg.batch_size}, prompt {cfg.prompt_length} ({cfg.init_from}), "
          f"{cfg.optimizer.name} lr {cfg.optimizer.learning_rate}:")
    for name, m in (("no prompt", no_prompt), (f"tuned (best, step {best['step']})", best),
                    ("tuned (final)", result.curve[-1])):
        print(f"  {name:28s} accuracy {m['accuracy']:.2f}  balanced accuracy "
              f"{m['balanced_accuracy']:.2f}")
    print(f"  wall: load {load_s:.0f}s, no-prompt eval {no_prompt_s:.0f}s, train+evals "
          f"{train_s:.0f}s; results: {path}")
    if args.out is None:
        shutil.rmtree(model_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
