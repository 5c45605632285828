"""A built wheel, installed non-editable into a fresh venv, runs from outside the checkout.

The wheel must carry `gin_configs/` (as `ptransfer/gin_configs/` package
data): without it every documented `--gin_file=models/...` fails with "not
found". The fresh venv reuses this venv's third-party packages through a path
entry (offline and fast), but gets ptransfer itself only from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("ptransfer", "tasks", "gin_configs", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")


def _run(cmd, cwd, env=None, timeout=120):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:  # build from a copy, so the checkout gets no build/ or egg-info
        p = REPO / name
        (shutil.copytree(p, src / name, ignore=ignore) if p.is_dir() else shutil.copy(p, src / name))
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", dist, src], cwd=tmp)
    wheel, = dist.glob("ptransfer-*.whl")

    venv = tmp / "venv"
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", venv], cwd=tmp)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
                .strip())
    # A plain path line: this venv's packages become importable, but its .pth
    # files (the editable install's finder among them) are not run.
    (site / "zz_reuse_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", wheel],
         cwd=tmp)
    outside = tmp / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PTRANSFER_GIN_PATH")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return venv, outside, env


def test_wheel_ships_gin_configs_and_runs_outside_the_checkout(installed):
    venv, outside, env = installed
    where = _run([venv / "bin" / "python", "-c",
                  "import ptransfer, ptransfer.cli.gin_setup as g; "
                  "print(ptransfer.__file__); print(g.packaged_gin_configs())"], cwd=outside, env=env)
    module_file, gin_dir = where.split()
    assert Path(module_file).is_relative_to(venv), module_file  # the wheel's copy, not the checkout
    assert Path(gin_dir) == Path(module_file).parent / "gin_configs"
    assert (Path(gin_dir) / "models" / "t5_tiny.gin").is_file()

    out = _run([venv / "bin" / "ptransfer", "train", "--gin_file=models/t5_tiny.gin",
                "--gin_file=runs/prompt_tune.gin", "--gin_file=prompts/random_uniform.gin",
                "--gin.TASK=mr", "--gin.MODEL_DIR=./run", "--gin.TRAIN_STEPS=3", "--print_config"],
               cwd=outside, env=env)
    assert "TRAIN_STEPS = 3" in out and "preset:t5_tiny" in out
    assert not (outside / "run").exists()  # --print_config loads and writes nothing
