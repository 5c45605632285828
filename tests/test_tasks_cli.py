"""`ptransfer tasks` and `ptransfer data check`."""

import os

import tasks
from ptransfer.cli import main as cli


def test_tasks_table_lists_everything(capsys):
    assert cli.main(["tasks"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["name", "type", "source", "splits", "(examples)", "label", "words",
                                "metrics"]
    for name in tasks.task_names():
        assert any(line.startswith(name + " ") for line in lines), name
    rt = next(line for line in lines if line.startswith("rt "))
    assert "(eval-only)" in rt and "validation=158 test=2164" in rt and "train" not in rt
    sst2 = next(line for line in lines if line.startswith("sst2 "))
    assert "tfds:glue/sst2" in sst2 and "negative/positive" in sst2 and "accuracy" in sst2
    squad = next(line for line in lines if line.startswith("squad "))
    assert "squad_f1" in squad and "(text)" in squad
    tweets = next(line for line in lines if line.startswith("tweets "))
    assert "[69% positive]" in tweets and "balanced_accuracy" in tweets


def test_data_check_reports_missing_and_present(tmp_path, assets_dir, capsys):
    rc = cli.main(["data", "check", "--data_dir", str(tmp_path), "--cache_dir", assets_dir])
    out = capsys.readouterr().out
    assert rc == 1
    status = {line.split()[1]: line.split()[0] for line in out.splitlines()
              if line.startswith(("ok", "MISSING"))}
    assert len(status) == 24
    assert all(status[n] == "MISSING" for n in tasks.PAPER_TASKS)
    assert all(status[n] == "ok" for n in tasks.CORPUS_TASKS)
    ethics_line = next(line for line in out.splitlines() if " justice " in line)
    assert os.path.join(str(tmp_path), "ethics", "justice", "justice_train.csv") in ethics_line
    assert "hendrycks/ethics" in ethics_line
    assert "tfds build glue/qqp --data_dir=" + str(tmp_path) in out

    d = tmp_path / "ethics" / "justice"
    d.mkdir(parents=True)
    for suffix in ("train", "test", "test_hard"):
        (d / f"justice_{suffix}.csv").write_text("label,scenario\n1,I paid him back.\n")
    cli.main(["data", "check", "--data_dir", str(tmp_path), "--cache_dir", assets_dir])
    out = capsys.readouterr().out
    assert any(line.startswith("ok") and " justice " in line for line in out.splitlines())
    # present release files are counted in the task table
    table = tasks_table_line("justice", str(tmp_path))
    assert "train=1 validation=1 test=1" in table


def tasks_table_line(name, data_dir):
    from ptransfer.cli.tasks import task_table

    return " ".join(next(r for r in task_table(data_dir) if r[0] == name))


def test_missing_corpus_cache_is_reported(tmp_path, capsys):
    cli.main(["data", "check", "--data_dir", str(tmp_path), "--cache_dir", str(tmp_path / "c")])
    out = capsys.readouterr().out
    mr = next(line for line in out.splitlines() if " mr " in line)
    assert mr.startswith("MISSING") and "ptransfer assets fetch" in mr
    assert "movieReviewSnippets_GroundTruth.txt" in mr
