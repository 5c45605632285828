"""Gin on the command line: search path, --gin.X overrides, and the early errors."""

import glob
import os

import gin
import pytest

from ptransfer.cli import gin_setup
from ptransfer.cli import main as cli
from ptransfer.cli.train import EVAL_REQUIRED, TRAIN_REQUIRED
from ptransfer.core.errors import ConfigError

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")
RUN = ["models/t5_tiny.gin", "runs/prompt_tune.gin"]
NEEDED = ["TASK=justice", "MODEL_DIR=/tmp/x", "TRAIN_STEPS=5"]


@pytest.fixture(autouse=True)
def clean_gin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the search path must not depend on the cwd
    yield
    gin.clear_config()


def _config(files=RUN, bindings=NEEDED):
    from ptransfer.training.trainer import build_train_config

    gin_setup.parse_gin(files, bindings, required=TRAIN_REQUIRED)
    return build_train_config()


def test_files_resolve_from_the_search_path_and_bindings_override():
    cfg = _config(bindings=NEEDED + ["BATCH_SIZE=3", "LEARNING_RATE=0.5", "EVAL_EXAMPLES=None",
                                     "INIT_FROM='text:hello world'", "SEED=7"])
    assert cfg.backbone == "preset:t5_tiny" and cfg.task == "justice"
    assert cfg.batch_size == 3 and cfg.seed == 7 and cfg.eval_examples is None
    assert cfg.init_from == "text:hello world" and cfg.train_steps == 5
    assert cfg.optimizer.name == "adafactor" and cfg.optimizer.learning_rate == 0.5
    assert cfg.prompt_length == 100  # the run file's default


def test_argv_rewrite_and_parser_accept_the_flag_family():
    assert gin_setup.rewrite_gin_args(["--gin.TASK=mr", "--x"]) == ["--gin_binding", "TASK=mr", "--x"]
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--gin_file=a.gin", "--gin.TASK=mr", "--gin", "SEED=1"])
    assert args.gin_file == ["a.gin"] and args.gin_binding == ["TASK=mr", "SEED=1"]


def test_print_config_shows_the_parsed_bindings(capsys):
    assert cli.main(["train", *[f"--gin_file={f}" for f in RUN],
                     *[f"--gin.{b}" for b in NEEDED], "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "TASK = 'justice'" in out and "preset:t5_tiny" in out


@pytest.mark.parametrize("bindings,match", [
    (NEEDED[:1], r"required gin macro\(s\) not set: MODEL_DIR, TRAIN_STEPS"),
    (NEEDED + ["TrainConfig.batch_sise=3"], "batch_sise"),
    (NEEDED + ["TrainConfg.seed=3"], r"No configurable matching 'TrainConfg'.*'TrainConfig'"),
    (NEEDED + ["PROMT_LENGTH=3"], r"no gin file uses the macro 'PROMT_LENGTH'.*'PROMPT_LENGTH'"),
    (NEEDED + ["TrainConfig.run_name=%RUN_NAM"], "used but never set: RUN_NAM"),
    (NEEDED + ["BATCH_SIZE"], "has no value"),
])
def test_bad_gin_is_one_clear_error_before_anything_runs(bindings, match):
    with pytest.raises(ConfigError, match=match):
        _config(bindings=bindings)


def test_missing_file_names_the_search_path():
    with pytest.raises(ConfigError, match="not found; searched: .*gin_configs"):
        _config(files=["models/t5_tny.gin", "runs/prompt_tune.gin"])


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(GIN_DIR, "models", "*.gin"))
                                        + glob.glob(os.path.join(GIN_DIR, "prompts", "*.gin"))))
def test_every_model_and_prompt_file_builds_a_train_config(path):
    from ptransfer import prompts

    rel = os.path.relpath(path, GIN_DIR)
    extra = ["PROMPT_FILE='/p.npy'"] if "from_file" in rel or "projected" in rel else []
    if rel in ("models/hf.gin", "models/gguf.gin"):
        extra.append("BACKBONE='hf:/x'")
    files = ([rel, "runs/prompt_tune.gin"] if rel.startswith("models/")
             else ["models/t5_tiny.gin", "runs/prompt_tune.gin", rel])
    cfg = _config(files=files, bindings=NEEDED + extra)
    assert ":" in cfg.backbone
    prompts.parse_init_from(cfg.init_from)
    assert prompts.describe_init(cfg.init_from)


def test_eval_run_file_builds_an_eval_config():
    from ptransfer.training.evaluation import build_eval_config

    gin_setup.parse_gin(["models/llama_tiny.gin", "runs/prompt_eval.gin"],
                        ["TASK=mr", "PROMPT=None"], required=EVAL_REQUIRED)
    cfg = build_eval_config()
    assert cfg.backbone == "preset:llama_tiny" and cfg.prompt is None and cfg.split == "validation"
    with pytest.raises(ConfigError, match="PROMPT"):
        gin_setup.parse_gin(["models/llama_tiny.gin", "runs/prompt_eval.gin"], ["TASK=mr"],
                            required=EVAL_REQUIRED)
