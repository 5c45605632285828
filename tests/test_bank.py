"""Prompt bank: round trip, atomic writes under real interruption, path safety, seeds, CLI."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from ptransfer.bank import store as bank
from ptransfer.cli.bank import main as bank_main
from ptransfer.core.errors import CheckpointError, ConfigError, DataError

META = {"init": "random_uniform", "steps": 300, "best_score": 0.8, "metric": "accuracy",
        "seed": 0}
CURVE = [{"step": 100, "accuracy": 0.7}, {"step": 200, "accuracy": 0.8}]


def _prompt(seed=0, length=4, width=6):
    return np.random.default_rng(seed).normal(size=(length, width)).astype(np.float32)


def test_round_trip_and_listing(tmp_path):
    root = str(tmp_path / "bank")
    path = bank.write_entry(root, "smollm2_135m", "mr", "seed0", _prompt(), META, CURVE)
    assert path == os.path.join(root, "smollm2_135m", "mr", "seed0")
    assert sorted(os.listdir(path)) == ["COMPLETE", "meta.json", "metrics.jsonl", "prompt.npy"]
    prompt, meta, metrics = bank.read_entry(path)
    np.testing.assert_array_equal(prompt, _prompt())
    assert prompt.dtype == np.float32
    assert metrics == CURVE
    for key in ("backbone", "task", "prompt_length", "d_model", "init", "steps", "best_score",
                "metric", "seed", "ptransfer_version", "created", "provenance"):
        assert key in meta, key
    assert (meta["backbone"], meta["task"], meta["prompt_length"], meta["d_model"]) == \
        ("smollm2_135m", "mr", 4, 6)
    bank.write_entry(root, "smollm2_135m", "sst2", "seed0", _prompt(1), META, [])
    bank.write_entry(root, "t5_tiny", "mr", "seed0", _prompt(2, width=8), META, [])
    assert [e.ref for e in bank.list_entries(root)] == [
        "smollm2_135m/mr/seed0", "smollm2_135m/sst2/seed0", "t5_tiny/mr/seed0"]
    assert [e.ref for e in bank.list_entries(root, backbone="t5_tiny")] == ["t5_tiny/mr/seed0"]
    assert [e.ref for e in bank.list_entries(root, task="mr")] == [
        "smollm2_135m/mr/seed0", "t5_tiny/mr/seed0"]
    assert bank.resolve_ref(root, "smollm2_135m/sst2").path.endswith("sst2/seed0")
    assert bank.resolve_ref(root, path).ref == "smollm2_135m/mr/seed0"


def test_exception_mid_write_leaves_nothing(tmp_path):
    root = str(tmp_path)

    def rows():
        yield CURVE[0]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        bank.write_entry(root, "bb", "task", "run", _prompt(), META, rows())
    assert bank.list_entries(root) == []
    assert os.listdir(os.path.join(root, "bb", "task")) == []  # temp dir cleaned up
    with pytest.raises(DataError, match="no complete entries"):
        bank.list_entries(root, require=True)


def test_sigkill_mid_write_leaves_no_complete_entry(tmp_path):
    root = str(tmp_path / "bank")
    ready = str(tmp_path / "ready")
    script = textwrap.dedent(f"""
        import time, numpy as np
        from ptransfer.bank import store as bank
        def rows():
            yield {{"step": 1, "accuracy": 0.5}}
            open({ready!r}, "w").close()   # prompt.npy and meta.json are on disk now
            time.sleep(120)
            yield {{"step": 2, "accuracy": 0.6}}
        bank.write_entry({root!r}, "bb", "task", "run", np.ones((3, 4), np.float32),
                         {META!r}, rows())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not os.path.exists(ready):
            assert proc.poll() is None, "writer exited before the kill"
            assert time.time() < deadline, "writer never reached the middle of the write"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    leftovers = os.listdir(os.path.join(root, "bb", "task"))
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-run-")  # truly interrupted
    assert "prompt.npy" in os.listdir(os.path.join(root, "bb", "task", leftovers[0]))
    assert bank.list_entries(root) == []
    assert bank_main(["bank", "list", "--bank", root]) == 2  # the CLI shows nothing either
    # the same run can be written afterwards
    bank.write_entry(root, "bb", "task", "run", np.ones((3, 4), np.float32), META, CURVE)
    assert [e.ref for e in bank.list_entries(root)] == ["bb/task/run"]


def test_directory_without_marker_is_not_an_entry(tmp_path):
    root = str(tmp_path)
    path = bank.write_entry(root, "bb", "task", "run", _prompt(), META, CURVE)
    os.remove(os.path.join(path, "COMPLETE"))  # as if copied without the marker
    assert bank.list_entries(root) == []
    with pytest.raises(CheckpointError, match="incomplete"):
        bank.read_entry(path)


def test_tampered_or_pickled_prompt_refused(tmp_path):
    root = str(tmp_path)
    path = bank.write_entry(root, "bb", "task", "run", _prompt(), META, CURVE)
    with open(os.path.join(path, "prompt.npy"), "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="checksum"):
        bank.read_entry(path)
    # an object array with a matching checksum must still never be unpickled
    np.save(os.path.join(path, "prompt.npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with open(os.path.join(path, "COMPLETE")) as f:
        marker = json.load(f)
    with open(os.path.join(path, "prompt.npy"), "rb") as f:
        marker["sha256"]["prompt.npy"] = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(path, "COMPLETE"), "w") as f:
        json.dump(marker, f)
    with pytest.raises(CheckpointError, match="not a plain array"):
        bank.read_entry(path)


@pytest.mark.parametrize("backbone,task,run", [
    ("..", "task", "run"), ("bb", "../../etc", "run"), ("bb", "task", "a/b"),
    ("bb", "task", ".hidden"), ("bb", "", "run"), ("/abs", "task", "run")])
def test_names_that_escape_the_bank_are_refused(tmp_path, backbone, task, run):
    root = tmp_path / "bank"
    root.mkdir()
    with pytest.raises(ConfigError, match="not allowed"):
        bank.write_entry(str(root), backbone, task, run, _prompt(), META, [])
    assert list(tmp_path.rglob("*.npy")) == []


def test_symlink_out_of_the_bank_is_refused(tmp_path):
    root, outside = tmp_path / "bank", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "bb")
    with pytest.raises(ConfigError, match="outside the bank"):
        bank.write_entry(str(root), "bb", "task", "run", _prompt(), META, [])
    assert list(outside.rglob("*")) == []


def test_bad_entries_and_errors(tmp_path):
    root = str(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        bank.list_entries(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="lacks best_score, metric"):
        bank.write_entry(root, "bb", "t", "r", _prompt(), {"init": "x", "steps": 1, "seed": 0})
    with pytest.raises(ConfigError, match="d_model=7"):
        bank.write_entry(root, "bb", "t", "r", _prompt(), {**META, "d_model": 7})
    bad = _prompt()
    bad[0, 0] = np.nan
    with pytest.raises(CheckpointError, match="NaN"):
        bank.write_entry(root, "bb", "t", "r", bad, META)
    with pytest.raises(ConfigError, match="numbers must be finite"):
        bank.write_entry(root, "bb", "t", "r", _prompt(), {**META, "best_score": float("nan")})
    bank.write_entry(root, "bb", "t", "r", _prompt(), META)
    with pytest.raises(CheckpointError, match="already exists"):
        bank.write_entry(root, "bb", "t", "r", _prompt(1), META)
    bank.write_entry(root, "bb", "t", "r", _prompt(1), META, overwrite=True)
    np.testing.assert_array_equal(bank.read_entry(os.path.join(root, "bb", "t", "r"))[0], _prompt(1))
    assert [n for n in os.listdir(os.path.join(root, "bb", "t"))] == ["r"]
    with pytest.raises(DataError, match="no complete entry for backbone='bx'.*Did you mean 'bb'"):
        bank.list_entries(root, backbone="bx", require=True)
    with pytest.raises(DataError, match="no complete bank entry bb/t/q"):
        bank.find_entry(root, "bb", "t", "q")
    with pytest.raises(DataError, match="no bank entry at"):
        bank.read_entry(os.path.join(root, "bb", "t", "missing"))


def test_summarize_seeds(tmp_path):
    root = str(tmp_path)
    scores = [0.71, 0.75, 0.80]
    for seed, score in enumerate(scores):
        bank.write_entry(root, "bb", "mr", f"seed{seed}", _prompt(seed),
                         {**META, "seed": seed, "best_score": score})
    bank.write_entry(root, "bb", "sst2", "seed0", _prompt(), META)
    bank.write_entry(root, "bb", "sst2", "imported", _prompt(),
                     {**META, "best_score": None, "metric": None})
    summary = bank.summarize_seeds(bank.list_entries(root))
    mr = summary[("bb", "mr")]
    assert mr.n == 3 and mr.seeds == (0, 1, 2)
    assert mr.mean == pytest.approx(sum(scores) / 3)
    mean = sum(scores) / 3
    assert mr.std == pytest.approx((sum((s - mean) ** 2 for s in scores) / 2) ** 0.5)
    sst2 = summary[("bb", "sst2")]
    assert sst2.n == 1 and sst2.std is None and sst2.runs == ("seed0",)
    bank.write_entry(root, "bb", "mr", "f1run", _prompt(), {**META, "metric": "f1"})
    with pytest.raises(ConfigError, match="different metrics"):
        bank.summarize_seeds(bank.list_entries(root))


def test_cli_list_show_export_import(tmp_path, capsys):
    root = str(tmp_path / "bank")
    bank.write_entry(root, "bb", "mr", "seed0", _prompt(), {**META, "family": "llama"}, CURVE)
    assert bank_main(["bank", "list", "--bank", root]) == 0
    out = capsys.readouterr().out
    assert "bb" in out and "mr" in out and "seed0" in out and "0.8" in out
    assert bank_main(["bank", "list", "--bank", root, "--seeds", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["mean"] == 0.8
    assert bank_main(["bank", "show", "--bank", root, "bb/mr/seed0"]) == 0
    assert "float32 [4, 6]" in capsys.readouterr().out
    adapter = str(tmp_path / "adapter")
    assert bank_main(["bank", "export", "--bank", root, "bb/mr", "--out", adapter]) == 0
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        assert json.load(f)["task_type"] == "CAUSAL_LM"
    assert bank_main(["bank", "import", "--bank", root, adapter, "--backbone", "bb",
                      "--task", "mr", "--run", "from_peft"]) == 0
    prompt, meta, _ = bank.read_entry(os.path.join(root, "bb", "mr", "from_peft"))
    np.testing.assert_array_equal(prompt, _prompt())
    assert meta["init"] == "import:peft" and meta["provenance"]["peft_config"]["token_dim"] == 6
    assert bank_main(["bank", "show", "--bank", root, "bb/mr"]) == 2  # two runs: ambiguous
    assert "name one" in capsys.readouterr().err


_RACER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from ptransfer.bank import store as bank
    from ptransfer.core.errors import PtransferError
    root, go, i, overwrite = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    prompt = np.full((4, 6), float(i), np.float32)
    meta = {"init": "random_uniform", "steps": 1, "best_score": None, "metric": None,
            "seed": i, "provenance": {"model_dir": f"/runs/writer{i}"}}
    while not os.path.exists(go):
        time.sleep(0.001)
    try:
        for _ in range(10 if overwrite else 1):  # overwriters: many swaps, many collisions
            bank.write_entry(root, "t5_tiny", "mr", "race", prompt, meta, [{"step": i}],
                             overwrite=overwrite)
    except PtransferError as e:
        print("REFUSED", e)
        sys.exit(3)
    print("WON", i)
""")


def _race(tmp_path, n, overwrite):
    root, go = str(tmp_path / "bank"), str(tmp_path / "go")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    if overwrite:  # the writers replace an existing entry
        bank.write_entry(root, "t5_tiny", "mr", "race", _prompt(), dict(META, seed=99), [])
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, root, go, str(i),
                               "1" if overwrite else "0"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(n)]
    time.sleep(1.5)  # every writer imported and polling
    open(go, "w").close()
    outs = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    task_dir = os.path.join(root, "t5_tiny", "mr")
    assert sorted(os.listdir(task_dir)) == ["race"], "temp or trash directories left behind"
    prompt, meta, rows = bank.read_entry(os.path.join(task_dir, "race"))
    assert prompt[0, 0] == meta["seed"] and rows == [{"step": meta["seed"]}]
    return outs, meta["seed"]


@pytest.mark.parametrize("trial", range(3))
def test_concurrent_creators_exactly_one_wins(tmp_path, trial):
    outs, winner = _race(tmp_path, 6, overwrite=False)
    won = [out for rc, out, _ in outs if rc == 0]
    assert won == [f"WON {winner}\n"], outs
    for rc, out, err in outs:
        if rc != 0:
            assert rc == 3 and err == "", (out, err)
            assert out.startswith("REFUSED bank entry t5_tiny/mr/race already exists"), out
            assert f"/runs/writer{winner}" in out, out


def test_concurrent_overwriters_all_succeed_cleanly(tmp_path):
    outs, winner = _race(tmp_path, 10, overwrite=True)
    assert winner in range(10)
    assert all(rc == 0 and err == "" for rc, _, err in outs), outs


def test_one_corrupt_meta_blocks_no_other_entry(tmp_path):
    root = str(tmp_path / "bank")
    good = bank.write_entry(root, "t5_tiny", "mr", "good", _prompt(), META, [])
    bad = bank.write_entry(root, "t5_tiny", "mr", "bad", _prompt(1), META, [])
    with open(os.path.join(bad, "meta.json"), "w") as f:
        f.write("{not json")
    assert [e.ref for e in bank.list_entries(root)] == ["t5_tiny/mr/good"]
    entries, problems = bank.scan_entries(root)
    assert [p for p, _ in problems] == [bad] and "unreadable meta.json" in problems[0][1]
    assert bank.find_entry(root, "t5_tiny", "mr").path == good  # the only good run
    out = subprocess.run([sys.executable, "-m", "ptransfer.cli.main", "bank", "list", "--bank",
                          root], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    assert "good" in out.stdout and bad in out.stderr and "skipping bank entry" in out.stderr
