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


def _import(tmp_path, prompt, *extra):
    np.save(tmp_path / "p.npy", prompt)
    return cli.main(["bank", "import", str(tmp_path / "p.npy"), "--format", "npy", "--bank",
                     str(tmp_path / "bank"), "--run", "r", *extra])


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("ptransfer: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_bank_import_refuses_a_wrong_width_and_unknown_tasks(tmp_path, capsys):
    six = np.ones((4, 6), np.float32)
    assert _import(tmp_path, six, "--backbone", "t5_tiny", "--task", "mr") == 2
    assert "is 4 x 6, but backbone 't5_tiny' has d_model 32 (its preset)" in _one_error(capsys)
    assert _import(tmp_path, six, "--backbone", "t5_tiny", "--task", "mrr") == 2
    assert "unknown task 'mrr'. Did you mean 'mr'" in _one_error(capsys)
    assert _import(tmp_path, six, "--backbone", "mystery", "--task", "mr") == 2
    assert "cannot check the prompt's width" in _one_error(capsys)
    assert not (tmp_path / "bank").exists(), "a refused import must write nothing"

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": 6}')
    assert _import(tmp_path, six, "--backbone", "mystery", "--task", "mr",
                   "--backbone-spec", f"hf:{hf}") == 0
    meta = bank.read_entry(str(tmp_path / "bank" / "mystery" / "mr" / "r"))[1]
    assert meta["backbone_spec"] == f"hf:{hf}" and meta["d_model"] == 6
    # Now the bank knows the backbone's width.
    assert _import(tmp_path, np.ones((4, 8), np.float32), "--backbone", "mystery", "--task",
                   "sst2") == 2
    assert "has d_model 6 (its entries in " in _one_error(capsys)
    assert _import(tmp_path, six, "--backbone", "mystery", "--task", "sst2") == 0
    assert sorted(e.ref for e in bank.list_entries(str(tmp_path / "bank"))) == [
        "mystery/mr/r", "mystery/sst2/r"]


def test_backbone_width_is_read_without_the_weights(tmp_path):
    from test_gguf import write_tiny_gguf

    from ptransfer.backbones import d_model_of_spec
    from ptransfer.checkpoints.gguf import GGUFCheckpoint

    assert d_model_of_spec("preset:llama_tiny") == 64 and d_model_of_spec("preset:t5_tiny") == 32
    assert d_model_of_spec("t5x:t5_1_1_xxl:/nowhere") == 4096
    path = write_tiny_gguf(str(tmp_path / "tiny.gguf"))
    width = GGUFCheckpoint(path).field("llama.embedding_length")
    assert d_model_of_spec(f"gguf:{path}") == width
    (tmp_path / "t5").mkdir()  # T5 calls the width d_model, the other families hidden_size
    (tmp_path / "t5" / "config.json").write_text(
        '{"architectures": ["T5ForConditionalGeneration"], "d_model": 48}')
    assert d_model_of_spec(f"hf:{tmp_path / 't5'}") == 48


def _all_parsers(parser, path=("ptransfer",)):
    import argparse

    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, path + (name,))


def test_help_shows_each_default_once_and_requires_only_what_has_none():
    import re

    from ptransfer.cli import gin_setup

    for name, parser in _all_parsers(cli.build_parser()):
        text = " ".join(parser.format_help().split())
        assert not re.search(r"\(default[^)]*\)\s*\(default", text), (name, text)
        assert "(default: None)" not in text, (name, text)
        for action in parser._actions:
            if action.required and action.help:
                assert "default" not in action.help, (name, action.option_strings)
    # The train command's "required" macros are those runs/prompt_tune.gin leaves unset.
    help_text = " ".join(cli.build_parser()._subparsers._group_actions[0]
                         .choices["train"].format_help().split())
    required = help_text.split("Required gin macros: ")[1].split(". ")[0]
    values = gin_setup.shipped_macro_values("runs/prompt_tune.gin")
    assert values["PROMPT_LENGTH"] == "100" and values["TASK"] == "%gin.REQUIRED"
    for macro in ("BACKBONE", "TASK", "MODEL_DIR", "TRAIN_STEPS"):
        assert macro in required
    for macro in ("PROMPT_LENGTH", "BATCH_SIZE", "INIT_FROM"):
        assert macro not in required and f"{macro} = {values[macro]}" in help_text, help_text


def test_help_spells_every_option_with_underscores():
    import re

    parser = cli.build_parser()
    for name, sub in _all_parsers(parser):
        text = sub.format_help()
        assert not re.findall(r"--[a-z0-9_]+-[a-z0-9-]+", text), (name, text)
    for flag in ("--task_type", "--task-type"):  # declared --task-type
        args = parser.parse_args(["bank", "export", "a/b", "--out", "o", flag, "CAUSAL_LM"])
        assert args.task_type == "CAUSAL_LM"
    cross = ["transfer", "cross-model", "--bank", "b", "--target_backbone", "t", "--tasks", "mr",
             "--out", "o"]
    for flag in ("--source_backbone", "--source-backbone"):
        assert parser.parse_args(cross + [flag, "s"]).source_backbone == "s"
