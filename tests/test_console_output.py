"""What a user sees on stderr: plain progress lines off a terminal, no TensorFlow start-up noise."""

import os
import subprocess
import sys

from _trainer_common import REPO, write_justice

from ptransfer.training.metric_writers import Progress

NOISE_MARKERS = ("cuInit", "oneDNN", "cudart_stub", "cpu_feature_guard", "absl::InitializeLog")


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(Progress, "PLAIN_EVERY_S", 0.0)
    progress = Progress(total=3, initial=0, batch_size=4, desc="train mr")
    for step in (1, 2, 3):
        progress.update(step, loss=0.5)
    progress.write("step 3: accuracy=50.0000")
    progress.close()
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert [line.split(" loss")[0] for line in lines[:3]] == [
        f"train mr: step {s}/3" for s in (1, 2, 3)]
    assert "loss=0.5000" in lines[2] and lines[3] == "step 3: accuracy=50.0000"


def test_the_cli_keeps_tensorflow_start_up_noise_off_stderr(tmp_path):
    data_dir = write_justice(str(tmp_path / "data"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    out = subprocess.run(
        [sys.executable, "-m", "ptransfer", "eval", "--gin_file=models/t5_tiny.gin",
         "--gin_file=runs/prompt_eval.gin", "--gin.TASK=justice", "--gin.PROMPT=None",
         f"--gin.DATA_DIR={data_dir}", "--gin.EVAL_EXAMPLES=4"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert '"task": "justice"' in out.stdout  # it really read data through TensorFlow
    noisy = [line for line in out.stderr.splitlines() if any(m in line for m in NOISE_MARKERS)]
    assert noisy == []
