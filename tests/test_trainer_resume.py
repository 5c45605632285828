"""A `ptransfer train` process killed with SIGKILL mid-run and started again with
the same command ends bitwise equal to an uninterrupted run."""

import json
import os
import signal
import time

import numpy as np
from _trainer_common import cli_env, popen_cli, run_cli, train_argv, write_justice

STEPS = 60


def _checkpoint_steps(model_dir):
    d = os.path.join(model_dir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _outputs(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        curve = [json.loads(line) for line in f]
    bank = os.path.join(model_dir, "bank", "t5_tiny", "justice", "run")
    return (np.load(os.path.join(model_dir, "prompt.npy")),
            np.load(os.path.join(bank, "prompt.npy")), curve)


def test_sigkill_mid_run_then_resume_is_bitwise_equal(tmp_path):
    data = write_justice(str(tmp_path / "data"))
    env = cli_env(str(tmp_path / "jax_cache"))
    macros = dict(TRAIN_STEPS=STEPS, CHECKPOINT_EVERY=4, EVAL_EVERY=10, RUN_NAME="run")

    straight = str(tmp_path / "straight")
    done = run_cli(train_argv(straight, data, **macros), env)
    assert done.returncode == 0, done.stderr[-3000:]

    resumed = str(tmp_path / "resumed")
    argv = train_argv(resumed, data, **macros)
    proc = popen_cli(argv, env)
    deadline = time.monotonic() + 300
    while not _checkpoint_steps(resumed) or max(_checkpoint_steps(resumed)) < 8:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(_checkpoint_steps(resumed))
    assert killed_at < STEPS and not os.path.exists(os.path.join(resumed, "prompt.npy"))

    again = run_cli(argv, env)
    assert again.returncode == 0, again.stderr[-3000:]
    final_a, bank_a, curve_a = _outputs(straight)
    final_b, bank_b, curve_b = _outputs(resumed)
    assert final_a.tobytes() == final_b.tobytes()
    assert bank_a.tobytes() == bank_b.tobytes()
    assert curve_a == curve_b and [r["step"] for r in curve_a] == list(range(0, STEPS + 1, 10))
    assert json.loads(again.stdout.strip().splitlines()[-1])["steps"] == STEPS


def test_checkpointer_keeps_the_last_k_and_the_best(tmp_path):
    import jax.numpy as jnp

    from ptransfer.training.checkpointing import Checkpointer

    ckpt = Checkpointer(str(tmp_path), keep=2)
    scores = {1: 0.5, 2: 0.9, 3: None, 4: 0.7, 5: None, 6: 0.6}
    for step, score in scores.items():
        state = {"prompt": jnp.full((2, 3), float(step)), "opt_state": [jnp.zeros(3)],
                 "best_prompt": jnp.zeros((2, 3)), "rng": jnp.zeros(2, jnp.uint32)}
        ckpt.save(step, state, {"step": step}, score=score)
    assert ckpt.all_steps() == [2, 5, 6]  # best (0.9 at step 2) + the latest two
    abstract = {"prompt": jnp.zeros((2, 3)), "opt_state": [jnp.zeros(3)],
                "best_prompt": jnp.zeros((2, 3)), "rng": jnp.zeros(2, jnp.uint32)}
    state, meta = ckpt.restore(2, abstract)
    assert meta == {"step": 2} and float(state["prompt"][0, 0]) == 2.0
