"""One data validation (`tasks.validation`) behind `ptransfer data check`,
`ptransfer tasks --data_dir` and training: each reports the error training
refuses with, and a refused run leaves no model dir and no orbax traceback."""

import os

import pytest
from _trainer_common import JUSTICE_FILES, cli_env, run_cli, train_argv, write_justice

from ptransfer.cli import main as cli


def _empty_train(data_dir):
    write_justice(data_dir, empty_train=True)
    return "split 'train' of task 'justice' is empty"


def _wrong_header(data_dir):
    write_justice(data_dir)
    path = os.path.join(data_dir, "ethics", "justice", JUSTICE_FILES[0])
    with open(path, "w") as f:
        f.write("lbl,text\n1,aaaa\n0,zzzz\n")
    return "header ['lbl', 'text'] lacks ['label', 'scenario']"


BAD_DATA = {"an empty train split": _empty_train, "a CSV with the wrong header": _wrong_header}


def _cli(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_data_check_tasks_and_training_report_the_same_error(case, tmp_path, capsys):
    data_dir = str(tmp_path / "data")
    expected = BAD_DATA[case](data_dir)
    model_dir = str(tmp_path / "run")

    code, _, err = _cli(train_argv(model_dir, data_dir), capsys)
    errors = [line for line in err.splitlines() if line.startswith("ptransfer: error: ")]
    assert code == 2 and len(errors) == 1 and expected in errors[0], err[-2000:]
    refusal = errors[0].removeprefix("ptransfer: error: ")
    assert not os.path.exists(model_dir), "a data error must stop the run before MODEL_DIR exists"

    code, out, _ = _cli(["data", "check", "--data_dir", data_dir], capsys)
    line = next(x for x in out.splitlines() if " justice " in x)
    assert code == 1 and line.split()[0] == "INVALID", line
    assert line.endswith(refusal), (line, refusal)

    code, out, _ = _cli(["tasks", "--data_dir", data_dir], capsys)
    assert code == 0
    row = next(x for x in out.splitlines() if x.startswith("justice "))
    assert "invalid (see below)" in row, row
    assert f"justice: {refusal}" in out.splitlines(), out[-2000:]


def test_good_data_is_ok_in_data_check(tmp_path, capsys):
    data_dir = write_justice(str(tmp_path / "data"))
    _, out, _ = _cli(["data", "check", "--data_dir", data_dir], capsys)
    assert next(x for x in out.splitlines() if " justice " in x).startswith("ok ")


def test_a_data_error_ends_in_one_line_without_a_traceback(tmp_path):
    data_dir = str(tmp_path / "data")
    expected = _empty_train(data_dir)
    model_dir = str(tmp_path / "run")
    proc = run_cli(train_argv(model_dir, data_dir), cli_env(str(tmp_path / "jax_cache")),
                   timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "cannot schedule new futures" not in proc.stderr, \
        proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ptransfer")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]
    assert not os.path.exists(model_dir)
