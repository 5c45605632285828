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


def test_divergence_on_the_final_update_is_caught(data_dir, tmp_path, monkeypatch):
    from ptransfer.training import checkpointing

    register_tiny_yesno(monkeypatch)
    bb = backbone("t5_tiny", 6.0)
    # The largest float32 rate is accepted; Adafactor's clipped update reaches 1.0000001,
    # so the update overflows to +-inf at step 1 while that step's loss (computed
    # before the update) is finite.
    import numpy as np

    cfg = tiny_config(tmp_path / "run", data_dir, train_steps=1, eval_every=0,
                      optimizer=OptimizerConfig(learning_rate=float(np.finfo(np.float32).max)))
    with pytest.raises(trainer.NonFiniteLossError) as err:
        Trainer(cfg, backbone=bb).run()
    msg = str(err.value)
    assert "prompt or optimizer state became NaN or inf after the update at step 1" in msg
    assert "rerunning the same command diverges again" in msg and "new MODEL_DIR" in msg
    assert "resumes" not in msg
    assert 1 not in checkpointing.Checkpointer(str(tmp_path / "run")).all_steps()
    assert not (tmp_path / "run" / "prompt.npy").exists()
    assert not (tmp_path / "run" / "bank").exists()


@pytest.mark.parametrize("rate", [1e39, float("inf"), float("nan"), 0.0, -0.1, 1e-46, "0.1"])
def test_learning_rate_must_be_a_finite_positive_float32(data_dir, tmp_path, rate):
    from ptransfer.training.optimizer import optimizer_config

    with pytest.raises(ConfigError, match="is not a finite positive float32"):
        tiny_config(tmp_path / "run", data_dir,
                    optimizer=OptimizerConfig(learning_rate=rate)).validate()
    with pytest.raises(ConfigError, match="is not a finite positive float32"):
        optimizer_config("adamw_t5", learning_rate=rate)


def test_nonfinite_prompts_are_refused_where_read(tmp_path):
    import numpy as np

    from ptransfer import prompts
    from ptransfer.core.errors import CheckpointError

    bb = backbone("t5_tiny")
    bad = np.zeros((4, bb.d_model), np.float32)
    bad[1, 2] = -np.inf
    np.save(tmp_path / "inf.npy", bad)
    with pytest.raises(CheckpointError, match="NaN or inf"):  # init and eval read this way
        prompts.init_prompt(str(tmp_path / "inf.npy"), bb, 4)
    from ptransfer.cli.main import main as cli_main

    code = cli_main(["bank", "import", str(tmp_path / "inf.npy"), "--bank", str(tmp_path / "b"),
                     "--backbone", "t5_tiny", "--task", "mr", "--run", "x"])
    assert code == 2 and not (tmp_path / "b" / "t5_tiny" / "mr" / "x").exists()


def test_bad_hf_directories_get_one_clear_message(tmp_path):
    from ptransfer.backbones import load_backbone
    from ptransfer.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="hf: directory .* does not exist"):
        load_backbone(f"hf:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json in"):
        load_backbone(f"hf:{tmp_path / 'empty'}")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_backbone(f"hf:{tmp_path / 'bad'}")
    (tmp_path / "bad" / "config.json").write_text('["LlamaForCausalLM"]')
    with pytest.raises(CheckpointError, match="config.json is not a JSON object"):
        load_backbone(f"hf:{tmp_path / 'bad'}")

