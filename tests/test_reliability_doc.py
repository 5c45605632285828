"""The bad-input table of docs/reliability.md is generated from these cases: each is
run here and its real message must be the one the document shows.

Regenerate after changing a message: PTRANSFER_WRITE_DOCS=1 pytest tests/test_reliability_doc.py
"""

import os

import numpy as np
import pytest

from ptransfer.bank import store as bank
from ptransfer.core.errors import CheckpointError, PtransferError
from ptransfer.training import trainer
from ptransfer.training.optimizer import OptimizerConfig

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                   "reliability.md")
BEGIN, END = "<!-- bad inputs: begin -->", "<!-- bad inputs: end -->"
META = {"init": "random", "steps": 1, "best_score": None, "metric": None, "seed": 0,
        "provenance": {"model_dir": "/runs/first"}}


def _config(tmp, **kw):
    base = dict(backbone="preset:t5_tiny", task="justice", model_dir=os.path.join(tmp, "run"),
                prompt_length=4, init_from="random", batch_size=4, train_steps=2)
    base.update(kw)
    return trainer.TrainConfig(**base)


def _cases(tmp):
    """(bad input, callable that must raise a PtransferError)."""
    root = os.path.join(tmp, "bank")
    prompt = np.zeros((4, 6), np.float32)

    def entry_twice():
        bank.write_entry(root, "t5_tiny", "mr", "seed0", prompt, META)
        bank.write_entry(root, "t5_tiny", "mr", "seed0", prompt, dict(META, seed=1))

    def model_dir_in_use():
        with trainer.hold_model_dir(os.path.join(tmp, "busy")):
            with trainer.hold_model_dir(os.path.join(tmp, "busy")):
                pass

    def corrupt_meta():
        path = bank.write_entry(root, "t5_tiny", "sst2", "seed0", prompt, META)
        with open(os.path.join(path, "meta.json"), "w") as f:
            f.write("{")
        raise CheckpointError(bank.scan_entries(root)[1][0][1])  # what the warning says

    def bad_json_hf():
        os.makedirs(os.path.join(tmp, "hf"), exist_ok=True)
        with open(os.path.join(tmp, "hf", "config.json"), "w") as f:
            f.write("{")
        trainer.Trainer(_config(tmp, backbone=f"hf:{tmp}/hf")).run()

    def bank_dir_is_a_file():
        open(os.path.join(tmp, "file"), "w").close()
        trainer.Trainer(_config(tmp, bank_dir=os.path.join(tmp, "file"))).run()

    def empty_split():
        from _trainer_common import write_justice

        data = write_justice(os.path.join(tmp, "data"), empty_train=True)
        trainer.Trainer(_config(tmp, data_dir=data)).run()

    def other_learning_rate():
        from ptransfer.training import checkpointing

        model_dir = os.path.join(tmp, "lr")
        checkpointing.check_run_identity(model_dir, {"optimizer": {"learning_rate": 0.3}})
        checkpointing.check_run_identity(model_dir, {"optimizer": {"learning_rate": 0.03}})

    def bank_import(*extra):
        from ptransfer.cli import main as cli

        np.save(os.path.join(tmp, "p.npy"), prompt)
        args = cli.build_parser().parse_args(["bank", "import", os.path.join(tmp, "p.npy"),
                                              "--format", "npy", "--bank", root, "--run", "r",
                                              *extra])
        args.func(args)

    inf = prompt.copy()
    inf[0, 0] = np.inf
    return [
        ("a second writer of one new bank entry", entry_twice),
        ("a second live run on one MODEL_DIR", model_dir_in_use),
        ("a corrupt meta.json (the entry is skipped; others are listed)", corrupt_meta),
        ("a prompt with NaN or inf written to the bank (bank import, trainer export)",
         lambda: bank.write_entry(root, "t5_tiny", "mr", "inf", inf, META)),
        ("RUN_NAME that is not one safe path component",
         lambda: trainer.Trainer(_config(tmp, run_name="../x")).run()),
        ("BANK_DIR that is a file", bank_dir_is_a_file),
        ("LEARNING_RATE that is not a finite positive float32 (1e39)",
         lambda: _config(tmp, optimizer=OptimizerConfig(learning_rate=1e39)).validate()),
        ("an hf: directory that does not exist",
         lambda: trainer.Trainer(_config(tmp, backbone=f"hf:{tmp}/nowhere")).run()),
        ("an hf: directory whose config.json is not JSON", bad_json_hf),
        ("an empty train split (the same in `ptransfer data check`)", empty_split),
        ("a lower LEARNING_RATE in a MODEL_DIR that holds a run (without CONTINUE_WITH_CHANGES)",
         other_learning_rate),
        ("an unknown preset", lambda: trainer.Trainer(_config(tmp, backbone="preset:t5_tny")).run()),
        ("`bank import` of a prompt whose width is not the backbone's d_model",
         lambda: bank_import("--backbone", "t5_tiny", "--task", "mr")),
        ("`bank import` of a backbone that is no preset and not in the bank, without "
         "--backbone_spec", lambda: bank_import("--backbone", "mystery", "--task", "mr")),
        ("`bank import` with an unknown task name",
         lambda: bank_import("--backbone", "t5_tiny", "--task", "mrr")),
    ]


def _table(tmp) -> str:
    rows = ["| bad input | error (exit code 2 from the CLI) |", "|---|---|"]
    for what, fn in _cases(tmp):
        with pytest.raises(PtransferError) as err:
            fn()
        msg = str(err.value).replace(tmp, "<tmp>").replace("|", "\\|")
        msg = " ".join(msg.split())
        if "written " in msg:  # the winner's time
            msg = msg.split("(written ")[0] + "(written <time>)" + msg.split(")", 1)[1]
        if "(host " in msg:
            msg = msg.split("(host ")[0] + "(host <host>, pid <pid>, started <time>)" + \
                msg.split(")", 1)[1]
        rows.append(f"| {what} | {type(err.value).__name__}: {msg} |")
    return "\n".join(rows)


def test_bad_input_table_in_the_docs_is_current(tmp_path):
    table = _table(str(tmp_path))
    with open(DOC) as f:
        text = f.read()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    current = f"{head}{BEGIN}\n{table}\n{END}{tail}"
    if os.environ.get("PTRANSFER_WRITE_DOCS"):
        with open(DOC, "w") as f:
            f.write(current)
    assert current == text, ("docs/reliability.md is out of date; regenerate it with "
                             "PTRANSFER_WRITE_DOCS=1 pytest tests/test_reliability_doc.py")
