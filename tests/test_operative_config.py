"""A `ptransfer train` run explains itself: the operative gin config in
MODEL_DIR (as T5X writes it) and TensorBoard train scalars beside the loss."""

from __future__ import annotations

import gin
import pytest
import tensorflow as tf
from _trainer_common import train_argv, write_justice

from ptransfer.cli.main import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explained")
    data_dir = write_justice(str(tmp / "data"))
    model_dir = tmp / "run"
    argv = train_argv(str(model_dir), data_dir, TRAIN_STEPS=4, EVAL_EVERY=4, CHECKPOINT_EVERY=0,
                      LEARNING_RATE=0.125, WARMUP_STEPS=2, LOG_EVERY=2)
    assert main(argv) == 0
    return model_dir, gin.operative_config_str()


def test_train_writes_the_operative_config_gin(run):
    model_dir, operative = run
    text = (model_dir / "config.gin").read_text()
    assert text == operative
    # the values the run used, including an optimizer setting read only during the run
    assert "TRAIN_STEPS = 4" in text and "LEARNING_RATE = 0.125" in text and "TASK = 'justice'" in text
    gin.clear_config(clear_constants=False)  # it parses back as gin (a user can rerun with it)
    gin.parse_config(text)
    assert gin.query_parameter("%TRAIN_STEPS") == 4


def test_tensorboard_gets_learning_rate_and_throughput_every_log_every_steps(run):
    model_dir, _ = run
    (events,) = (model_dir / "tb" / "train").glob("events.out.tfevents.*")
    got = {}
    texts = {}
    for e in tf.compat.v1.train.summary_iterator(str(events)):
        for v in e.summary.value:
            if v.metadata.plugin_data.plugin_name == "text":
                texts[e.step] = tf.make_ndarray(v.tensor).item().decode()
            else:
                got.setdefault(v.tag, {})[e.step] = v.simple_value
    # the operative config as TensorBoard text, at the start and complete at the end
    assert set(texts) == {0, 4} and "    TRAIN_STEPS = 4" in texts[4].splitlines()
    assert "LEARNING_RATE = 0.125" in texts[4]
    assert set(got) == {"loss", "learning_rate", "timing/steps_per_second",
                        "timing/examples_per_second"}
    assert all(set(steps) == {2, 4} for steps in got.values())  # LOG_EVERY = 2
    # linear warmup over 2 steps: the update of step s used the rate at count s - 1
    assert got["learning_rate"] == {2: pytest.approx(0.0625), 4: pytest.approx(0.125)}
    for step in (2, 4):
        sps = got["timing/steps_per_second"][step]
        assert sps > 0
        assert got["timing/examples_per_second"][step] == pytest.approx(4 * sps, rel=1e-5)  # BATCH_SIZE 4
