"""Small defects: gin's call suffix in messages, option spellings, bank entry modes."""

import os
import stat

import numpy as np
from _trainer_common import train_argv, write_justice

from ptransfer.bank import store as bank
from ptransfer.cli import main as cli


def test_errors_inside_gin_configurables_end_without_gin_noise(tmp_path, capsys):
    data = write_justice(str(tmp_path / "data"))
    code = cli.main(train_argv(str(tmp_path / "run"), data, LEARNING_RATE=1e39))
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("ptransfer: error: ")]
    assert code == 2 and "is not a finite positive float32" in line, err[-2000:]
    assert "<function" not in line and " at 0x" not in line and "In call to" not in line, line


def test_options_accept_underscore_and_hyphen_spellings(tmp_path, capsys):
    data = write_justice(str(tmp_path / "data"))
    for flag in ("--data_dir", "--data-dir"):
        assert cli.main(["tasks", flag, data]) == 0
        assert "train=8 validation=8 test=8" in capsys.readouterr().out
    parser = cli.build_parser()
    for flag in ("--wheel_dir", "--wheel-dir"):  # declared with a hyphen
        assert parser.parse_args(["assets", "fetch", flag, "/w"]).wheel_dir == "/w"


def test_bank_entry_directories_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = bank.write_entry(str(tmp_path / "bank"), "t5_tiny", "mr", "seed0",
                                np.zeros((4, 6), np.float32), {"init": "random", "steps": 1, "best_score": None, "metric": None,
                                                               "seed": 0})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
