"""`ptransfer train` leaves the operative gin config in MODEL_DIR, as T5X does."""

from __future__ import annotations

import gin
from _trainer_common import train_argv, write_justice

from ptransfer.cli.main import main


def test_train_writes_the_operative_config_gin(tmp_path, capsys):
    data_dir = write_justice(str(tmp_path / "data"))
    model_dir = tmp_path / "run"
    argv = train_argv(str(model_dir), data_dir, TRAIN_STEPS=2, EVAL_EVERY=2, CHECKPOINT_EVERY=0,
                      LEARNING_RATE=0.125)
    assert main(argv) == 0
    text = (model_dir / "config.gin").read_text()
    assert text == gin.operative_config_str()
    # the values the run used, including an optimizer setting read only during the run
    assert "TRAIN_STEPS = 2" in text and "LEARNING_RATE = 0.125" in text and "TASK = 'justice'" in text
    # it parses back as gin (a user can rerun with it)
    gin.clear_config(clear_constants=False)
    gin.parse_config(text)
    assert gin.query_parameter("%TRAIN_STEPS") == 2
