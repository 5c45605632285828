"""Failures a cluster produces: a job launched twice on one model dir, checks that
must come before the work, divergence on the last update."""

import os
import signal
import time

import pytest
from _trainer_common import (
    backbone,
    cli_env,
    popen_cli,
    register_tiny_yesno,
    run_cli,
    train_argv,
    write_justice,
)

from ptransfer.core.errors import ConfigError
from ptransfer.training import trainer
from ptransfer.training.optimizer import OptimizerConfig
from ptransfer.training.trainer import TrainConfig, Trainer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_justice(str(tmp_path_factory.mktemp("data")))


def tiny_config(model_dir, data_dir, **kw):
    """A few steps of the tiny yes/no task on a random t5_tiny."""
    base = dict(backbone="preset:t5_tiny", task="tiny_yesno", model_dir=str(model_dir),
                prompt_length=20, init_from="vocab", batch_size=8, train_steps=2,
                optimizer=OptimizerConfig(name="adamw", learning_rate=0.1, weight_decay=0.0),
                input_length=8, target_length=4, eval_split="train", eval_every=2,
                eval_examples=None, checkpoint_every=1, data_dir=data_dir, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_names_and_outputs_are_checked_before_any_training_step(data_dir, tmp_path,
                                                                 monkeypatch):
    register_tiny_yesno(monkeypatch)
    bb = backbone("t5_tiny", 6.0)
    for name in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(ConfigError, match=r"run \(RUN_NAME\) name .* is not allowed"):
            Trainer(tiny_config(tmp_path / "bad", data_dir, run_name=name), backbone=bb).run()
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="BANK_DIR .* is not a directory"):
        Trainer(tiny_config(tmp_path / "bad", data_dir, bank_dir=str(tmp_path / "file")),
                backbone=bb).run()
    assert not (tmp_path / "bad").exists(), "a refused run must not touch its model dir"
    # A model dir whose base name is not a bank name gives a safe default run name.
    result = Trainer(tiny_config(tmp_path / "_r7d", data_dir), backbone=bb).run()
    assert result.bank_entry == str(tmp_path / "_r7d" / "bank" / "t5_tiny" / "tiny_yesno" / "r7d")


def test_second_live_run_on_one_model_dir_is_refused(tmp_path):
    data = write_justice(str(tmp_path / "data"))
    env = cli_env(str(tmp_path / "jax_cache"))
    model_dir = str(tmp_path / "run")
    argv = train_argv(model_dir, data, TRAIN_STEPS=100000, EVAL_EVERY=50, CHECKPOINT_EVERY=50)
    first = popen_cli(argv, env)
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(os.path.join(model_dir, "metrics.jsonl")):  # first is training
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first run never started training"
            time.sleep(0.05)
        second = run_cli(argv, env, timeout=120)
        assert second.returncode == 2, second.stderr[-3000:]
        errors = [line for line in second.stderr.splitlines() if line.startswith("ptransfer")]
        assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
        assert "is in use by another live run" in errors[0], errors
        assert f"pid {first.pid}" in errors[0], errors
        assert first.poll() is None, "the first run must go on"
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # The dead run's lock is released by the OS: the next run takes it over.
    with trainer.hold_model_dir(model_dir):
        pass
