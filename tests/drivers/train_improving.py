"""A real training run whose best prompt improves twice within a few steps, for
the kill -9 test (tests/test_reliability_kill.py).

  python tests/drivers/train_improving.py MODEL_DIR DATA_DIR

A random llama_tiny learns `tiny_yesno` (label words " no" / " yes") at a high
learning rate: accuracy on the 8 training examples goes 50 -> 87.5 -> 100
within 20 steps (at steps 14 and 18), evaluated and checkpointed every 2 steps.
A plain CLI run of t5_tiny on a real task stays at one score, so a kill there
could never land between two improvements. The same command resumes a killed
run. At the end the driver exits 3 unless the score in metrics.jsonl went up
at least twice after step 0 (else the kill test would prove nothing) and
prints the result as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _trainer_common import tiny_yesno_spec  # noqa: E402

from ptransfer.training.optimizer import OptimizerConfig  # noqa: E402
from ptransfer.training.trainer import TrainConfig, Trainer  # noqa: E402

STEPS = 20
RUN_NAME = "run"


def config(model_dir: str, data_dir: str) -> TrainConfig:
    return TrainConfig(
        backbone="preset:llama_tiny", task="tiny_yesno", model_dir=model_dir, run_name=RUN_NAME,
        prompt_length=20, init_from="vocab", batch_size=8, train_steps=STEPS,
        optimizer=OptimizerConfig(name="adamw", learning_rate=0.1, weight_decay=0.0),
        input_length=8, target_length=4, eval_split="train", eval_every=2, eval_examples=None,
        checkpoint_every=2, data_dir=data_dir, progress=False)


def improvements(curve: list[dict], metric: str = "accuracy") -> list[int]:
    """Steps after 0 at which `metric` beat every earlier evaluation."""
    steps, best = [], None
    for row in curve:
        if best is not None and row[metric] > best:
            steps.append(row["step"])
        best = row[metric] if best is None else max(best, row[metric])
    return steps


def main(model_dir: str, data_dir: str) -> int:
    from tasks import specs

    spec = tiny_yesno_spec()
    specs.SPECS[spec.name] = spec  # a test-only task, registered in this process only
    result = Trainer(config(model_dir, data_dir)).run()
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        curve = [json.loads(line) for line in f]
    ups = improvements(curve)
    print(json.dumps({"best_step": result.best_step, "best_score": result.best_score,
                      "improvements": ups, "bank_entry": result.bank_entry}))
    if len(ups) < 2:
        print(f"the score improved at steps {ups} only; the kill test needs two improvements",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
