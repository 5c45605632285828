"""T5X's flag spellings on ptransfer's commands, through the real CLI parser."""

from __future__ import annotations

import pytest

from ptransfer.cli import gin_setup
from ptransfer.cli.main import build_parser
from ptransfer.cli.train import TRAIN_REQUIRED
from ptransfer.core.errors import ConfigError

BASE = ["train", "--gin_file=models/t5_tiny.gin", "--gin_file=runs/prompt_tune.gin",
        "--gin.TASK=mr", "--gin.TRAIN_STEPS=2"]


def _parse(argv):
    args = build_parser().parse_args(argv)
    gin_setup.parse_gin(args.gin_file, args.gin_binding, required=TRAIN_REQUIRED,
                        search_paths=args.gin_search_path)
    return args


def test_t5x_flag_spellings_parse(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mine.gin").write_text("PROMPT_LENGTH = 7\n")
    args = _parse(BASE + ["--gin.MODEL_DIR=./rel", "--gin_bindings=BATCH_SIZE = 3",
                          f"--gin_search_paths={tmp_path / 'a'},{tmp_path / 'b'}", "--gin_file=mine.gin",
                          "--tfds_data_dir=/data/tfds", "--alsologtostderr", "--logtostderr"])
    assert args.gin_search_path == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert gin_setup.macro_value("MODEL_DIR") == "./rel"
    assert gin_setup.macro_value("BATCH_SIZE") == 3
    assert gin_setup.macro_value("PROMPT_LENGTH") == 7  # found through --gin_search_paths
    assert gin_setup.macro_value("DATA_DIR") == "/data/tfds"
    assert gin_setup.macro_value("TRAIN_STEPS") == 2


@pytest.mark.parametrize("raw, want", [
    ("MODEL_DIR=./rel", "MODEL_DIR = './rel'"), ("MODEL_DIR=../up/x", "MODEL_DIR = '../up/x'"),
    ("MODEL_DIR=gs://b/run", "MODEL_DIR = 'gs://b/run'"), ("X=.5", "X = .5"), ("X=-3", "X = -3"),
    ("X=1e-3", "X = 1e-3"), ("X=-x", "X = '-x'"), ("X=inf", "X = 'inf'"), ("X=None", "X = None"),
    ("X='q'", "X = 'q'"), ("X=[1, 2]", "X = [1, 2]"), ("X=%Y", "X = %Y"),
])
def test_bare_values_are_strings_and_literals_stay_literals(raw, want):
    assert gin_setup._as_binding(raw) == want


def test_tfds_data_dir_without_a_data_dir_macro_is_one_clear_error():
    with pytest.raises(ConfigError, match="DATA_DIR"):
        args = build_parser().parse_args(["train", "--gin_file=models/t5_tiny.gin", "--tfds_data_dir=/d"])
        gin_setup.parse_gin(args.gin_file, args.gin_binding, search_paths=args.gin_search_path)
