"""Failures a cluster produces: a job launched twice on one model dir, checks that
must come before the work, divergence on the last update."""

import os
import signal
import time

from _trainer_common import cli_env, popen_cli, run_cli, train_argv, write_justice

from ptransfer.training import trainer


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
