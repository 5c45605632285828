"""kill -9 while the best prompt is improving, then the same command again: the bank
entry's best prompt (prompt.npy, byte for byte) and its best_step are those of an
uninterrupted run. The run is tests/drivers/train_improving.py, a real Trainer on a
task whose score goes up twice within 20 steps."""

import json
import os
import signal
import subprocess
import sys
import time

from _trainer_common import REPO, cli_env, write_justice

DRIVER = os.path.join(REPO, "tests", "drivers", "train_improving.py")
ENTRY = ("bank", "llama_tiny", "tiny_yesno", "run")


def _start(model_dir, data_dir, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, DRIVER, model_dir, data_dir], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _checkpoint_steps(model_dir) -> list[int]:
    d = os.path.join(model_dir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _curve(model_dir) -> list[dict]:
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written
            break
    return rows


def _entry(model_dir):
    path = os.path.join(model_dir, *ENTRY)
    with open(os.path.join(path, "prompt.npy"), "rb") as f:
        prompt = f.read()
    with open(os.path.join(path, "meta.json")) as f:
        return prompt, json.load(f)


def test_sigkill_while_the_best_prompt_improves_then_resume(tmp_path):
    data = write_justice(str(tmp_path / "data"))
    env = cli_env(str(tmp_path / "jax_cache"))
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    # The run to kill goes first and alone: the other two then start from its compiled
    # programs (the persistent compilation cache) and run side by side.
    victim = _start(killed, data, env)
    try:
        deadline = time.monotonic() + 300
        while True:  # until a checkpoint holds the first improvement
            curve = _curve(killed)
            better = [r["step"] for r in curve if r["accuracy"] > curve[0]["accuracy"]]
            if better and max(_checkpoint_steps(killed), default=-1) >= better[0]:
                break
            assert victim.poll() is None, victim.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run to kill never improved"
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)
        victim.communicate()
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    killed_at = max(_checkpoint_steps(killed))
    assert not os.path.exists(os.path.join(killed, *ENTRY))

    first, again = _start(straight, data, env), _start(killed, data, env)
    try:
        summary, resumed = _finish(first), _finish(again)
    finally:
        for proc in (first, again):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    first_up, final_best = summary["improvements"][0], summary["best_step"]
    assert first_up < final_best, summary  # the driver asserts two improvements
    assert first_up <= killed_at < final_best, (killed_at, summary)
    assert resumed["best_step"] == final_best
    prompt_a, meta_a = _entry(straight)
    prompt_b, meta_b = _entry(killed)
    assert prompt_a == prompt_b, "the resumed run's best prompt differs"
    assert meta_b["best_step"] == meta_a["best_step"] == final_best
    assert meta_b["best_score"] == meta_a["best_score"]
    assert _curve(straight) == _curve(killed)
