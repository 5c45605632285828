"""CONTINUE_WITH_CHANGES: a diverged run continues from its last good checkpoint
with the lower learning rate its NaN message names, recorded in the run identity."""

import json
import os
import re

import numpy as np
from _trainer_common import train_argv, write_justice

from ptransfer.cli import main as cli

HUGE = 1e30  # AdamW moves every prompt entry by ~1e30 at step 1: the loss overflows next


def _cli(argv, capsys):
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_a_diverged_run_continues_with_the_documented_flags(tmp_path, capsys):
    data = write_justice(str(tmp_path / "data"))
    model_dir = str(tmp_path / "run")
    argv = train_argv(model_dir, data, TRAIN_STEPS=6, EVAL_EVERY=3, CHECKPOINT_EVERY=3,
                      LEARNING_RATE=HUGE)
    code, err = _cli(argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("ptransfer: error: ")]
    assert code == 2 and len(errors) == 1, err[-3000:]
    assert "rerunning the same command diverges again" in errors[0]
    assert "The last good checkpoint is step 0" in errors[0], errors[0]
    flags = re.findall(r"--gin\.[A-Z_]+=\S+", errors[0].split("rerun the same command with")[1])
    assert flags[:2] == ["--gin.CONTINUE_WITH_CHANGES=True", f"--gin.LEARNING_RATE={HUGE / 10:.3g}"]

    # The same command with a lower rate alone is refused, naming the flag to add.
    code, err = _cli(argv + ["--gin.LEARNING_RATE=0.01"], capsys)
    assert code == 2 and "holds a different run" in err and "CONTINUE_WITH_CHANGES=True" in err

    # The documented continuation, with a rate that does not diverge.
    code, err = _cli(argv + [flags[0], "--gin.LEARNING_RATE=0.01"], capsys)
    assert code == 0, err[-3000:]
    prompt = np.load(os.path.join(model_dir, "prompt.npy"))
    assert np.isfinite(prompt).all()
    with open(os.path.join(model_dir, "run_identity.json")) as f:
        identity = json.load(f)
    assert identity["optimizer"]["learning_rate"] == 0.01
    (record,) = identity["continuations"]
    assert record["at_step"] == 0 and record["previous_optimizer"]["learning_rate"] == HUGE
    steps = [r["step"] for r in map(json.loads, open(os.path.join(model_dir, "metrics.jsonl")))]
    assert steps == [0, 3, 6], steps

    # Rerunning without the flag resumes: the identity now holds the new rate.
    code, err = _cli(argv + ["--gin.LEARNING_RATE=0.01"], capsys)
    assert code == 0, err[-3000:]
    with open(os.path.join(model_dir, "run_identity.json")) as f:
        assert len(json.load(f)["continuations"]) == 1


def test_continue_with_changes_still_refuses_other_changes(tmp_path, capsys):
    data = write_justice(str(tmp_path / "data"))
    model_dir = str(tmp_path / "run")
    argv = train_argv(model_dir, data, TRAIN_STEPS=3, EVAL_EVERY=3)
    assert _cli(argv, capsys)[0] == 0
    code, err = _cli(argv + ["--gin.CONTINUE_WITH_CHANGES=True", "--gin.PROMPT_LENGTH=5"], capsys)
    assert code == 2 and "prompt_length: 4 there vs 5 now" in err, err[-2000:]
