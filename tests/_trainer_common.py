"""Shared pieces of the prompt / scoring / trainer tests (not a test module).

Data: the real `justice` task (ETHICS release CSV layout) read from files the
tests write, and `tiny_yesno`, a test-only TaskSpec over the same reader whose
label words ("no" / "yes") differ in their first byte, so a prompt on a tiny
random model can learn them within a few dozen steps.

Backbones are loaded once per process (`backbone`), so compiled functions are
shared between test files that run in the same worker.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Class 1 texts use the letters a/b, class 0 texts y/z: separable by content.
TINY_ROWS = [(1, "aaaa"), (0, "zzzz"), (1, "abab"), (0, "zyzy"),
             (1, "bbaa"), (0, "yyzz"), (1, "baab"), (0, "yzzy")]
JUSTICE_FILES = ("justice_train.csv", "justice_test.csv", "justice_test_hard.csv")


def write_justice(data_dir: str, rows=TINY_ROWS, empty_train: bool = False) -> str:
    """ETHICS justice CSVs (header label,scenario) under <data_dir>/ethics/justice/."""
    d = os.path.join(data_dir, "ethics", "justice")
    os.makedirs(d, exist_ok=True)
    for name in JUSTICE_FILES:
        with open(os.path.join(d, name), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "scenario"])
            if not (empty_train and name == "justice_train.csv"):
                w.writerows(rows)
    return data_dir


def tiny_yesno_spec():
    from tasks.sources import ReleaseFiles
    from tasks.specs import TaskSpec

    files = {"train": ("justice_train.csv",), "validation": ("justice_test.csv",)}
    return TaskSpec("tiny_yesno", "sentiment",
                    ReleaseFiles("ethics/justice", files, "ethics", "written by the tests"),
                    template="{scenario} =", label_words=("no", "yes"),
                    metrics=("accuracy", "balanced_accuracy"))


def register_tiny_yesno(monkeypatch) -> str:
    """Adds `tiny_yesno` to the task registry for one test."""
    from tasks import specs

    spec = tiny_yesno_spec()
    monkeypatch.setitem(specs.SPECS, spec.name, spec)
    return spec.name


@functools.lru_cache(maxsize=None)
def backbone(preset: str, cross_attention_scale: float = 1.0):
    """A preset backbone (seed 0), loaded once per process.

    `cross_attention_scale` multiplies a T5's encoder-decoder attention output
    kernels: in a 2-layer random T5 the decoder barely reads the encoder (the
    prompt moves first-step logits by ~0.2), so the fit test uses a random
    init where it does. Still a frozen random tiny T5.
    """
    import jax

    from ptransfer import load_backbone

    bb = load_backbone(f"preset:{preset}")
    if cross_attention_scale != 1.0:
        def scale(path, x):
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            return x * cross_attention_scale if "encoder_decoder_attention/out" in name else x
        bb = dataclasses.replace(bb, params=jax.tree_util.tree_map_with_path(scale, bb.params))
    return bb


def host_copy(tree):
    import jax

    return jax.tree_util.tree_map(lambda x: np.array(x, copy=True), tree)


def trees_equal(a, b) -> bool:
    import jax

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


def cli_env(cache_dir: str, devices: int | None = None) -> dict:
    """Environment of a `ptransfer` subprocess: quiet TF, a shared persistent
    compilation cache (identical programs compile once per test session)."""
    env = dict(os.environ)
    env.update(TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if devices:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def train_argv(model_dir: str, data_dir: str, **macros) -> list[str]:
    """`ptransfer train` arguments for a small t5_tiny run on `justice`."""
    base = dict(TASK="justice", MODEL_DIR=model_dir, DATA_DIR=data_dir, TRAIN_STEPS=12,
                PROMPT_LENGTH=4, BATCH_SIZE=4, INPUT_LENGTH=12, TARGET_LENGTH=16,
                EVAL_EVERY=6, EVAL_EXAMPLES=8, CHECKPOINT_EVERY=3, OPTIMIZER="adamw_t5")
    base.update(macros)
    argv = ["train", "--gin_file=models/t5_tiny.gin", "--gin_file=runs/prompt_tune.gin"]
    argv += [f"--gin.{k}={v}" for k, v in base.items()]
    return argv + ["--gin.TrainConfig.progress=False"]


def popen_cli(argv, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ptransfer.cli.main", *argv], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(argv, env, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptransfer.cli.main", *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
