"""TASK may be any registered seqio Task or Mixture (T5X's MIXTURE_OR_TASK_NAME).

`tests/user_tasks/my_seqio_tasks.py` registers `my_yes_no` over a local CSV
file, as a T5X user would, and is named by `--gin.import`; its label words
come from its postprocessor's `label_classes`, its metric from its metric_fns.
"""

import csv
import json
import os

import pytest
from _trainer_common import TINY_ROWS

from ptransfer.cli import main as cli
from ptransfer.core.errors import ConfigError

USER_TASKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "user_tasks")


@pytest.fixture
def user_task(tmp_path, monkeypatch):
    path = tmp_path / "yes_no.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "text", "label"])
        for split in ("train", "validation"):
            w.writerows((split, text, "yes" if y else "no") for y, text in TINY_ROWS)
    monkeypatch.setenv("MY_TASK_CSV", str(path))
    monkeypatch.syspath_prepend(USER_TASKS)
    return tmp_path


def _last_json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_a_user_registered_seqio_task_trains_evaluates_and_transfers(user_task, capsys):
    model_dir = user_task / "run"
    assert cli.main(["train", "--gin_file=models/t5_tiny.gin", "--gin_file=runs/prompt_tune.gin",
                     "--gin.import=my_seqio_tasks",
                     "--gin.TASK=my_yes_no", f"--gin.MODEL_DIR={model_dir}",
                     "--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=4", "--gin.PROMPT_LENGTH=4",
                     "--gin.EVAL_EVERY=0"]) == 0
    trained = _last_json(capsys)
    assert trained["steps"] == 3 and trained["metric"] == "accuracy"  # from its metric_fns
    meta = json.loads(open(os.path.join(trained["bank_entry"], "meta.json")).read())
    assert meta["task"] == "my_yes_no"
    assert "import my_seqio_tasks" in (model_dir / "config.gin").read_text()

    # evaluated on the task, and (the transfer path) on a mixture over it
    for task in ("my_yes_no", "my_yes_no_mix"):
        assert cli.main(["eval", "--gin_file=models/t5_tiny.gin", "--gin_file=runs/prompt_eval.gin",
                         "--gin.import=my_seqio_tasks", f"--gin.TASK={task}",
                         f"--gin.PROMPT={trained['bank_entry']}"]) == 0
        result = _last_json(capsys)
        assert result["task"] == task and result["examples"] == len(TINY_ROWS)
        assert list(result["metrics"]) == ["accuracy"]  # its metric_fns


def test_label_words_and_metrics_given_in_gin_override_the_task_metadata(user_task):
    import gin
    import my_seqio_tasks  # noqa: F401  (registers the task)

    import tasks

    gin.parse_config("tasks.seqio_task_metadata.overrides = "
                     "{'my_yes_no': {'label_words': ['yes', 'no'], 'metrics': ['macro_f1']}}")
    spec = tasks.get_spec("my_yes_no")
    assert spec.label_words == ("yes", "no") and spec.metrics == ("macro_f1",)
    gin.clear_config()
    assert tasks.get_spec("my_yes_no").label_words == ("no", "yes")  # its label_classes
    with pytest.raises(ConfigError, match="no registered seqio Task"):
        tasks.get_spec("my_yes_nope")


def test_a_missing_import_module_is_one_clear_error(capsys):
    code = cli.main(["train", "--gin_file=models/t5_tiny.gin", "--gin_file=runs/prompt_tune.gin",
                     "--gin.import=no_such_tasks_module", "--gin.TASK=x"])
    assert code == 2 and "no_such_tasks_module" in capsys.readouterr().err
