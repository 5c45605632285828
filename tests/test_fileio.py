"""Remote paths through tf.io.gfile, with TensorFlow's real in-memory `ram://`
filesystem standing in for gs://: the prompt bank, metrics.jsonl, TensorBoard,
atomic writes and the run identity all round-trip there, and nothing is
written to the local disk instead (each test runs in an empty cwd that must
stay empty: a path handled by `os` would create a local 'ram:' directory)."""

import hashlib
import io
import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from ptransfer.core import fileio
from ptransfer.core import fileio as atomic
from ptransfer.core.errors import CheckpointError, DataError

tf = pytest.importorskip("tensorflow")
gfile = tf.io.gfile

META = {"init": "random_uniform", "steps": 300, "best_score": 0.8, "metric": "accuracy",
        "seed": 0}
CURVE = [{"step": 100, "accuracy": 0.7}, {"step": 200, "accuracy": 0.8}]


def _prompt(seed=0, length=4, width=6):
    return np.random.default_rng(seed).normal(size=(length, width)).astype(np.float32)


def _read(path) -> bytes:
    with gfile.GFile(path, "rb") as f:
        return f.read()


@pytest.fixture
def ram(tmp_path, monkeypatch):
    """A fresh ram:// root; the test runs in an empty local cwd checked at the end."""
    root = f"ram://ptransfer-test-{uuid.uuid4().hex[:10]}"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield root
    assert not os.listdir(cwd), f"wrote locally: {os.listdir(cwd)}"
    if gfile.exists(root):
        gfile.rmtree(root)


def test_ram_filesystem_is_real_and_fileio_dispatches(ram):
    assert fileio.is_remote(ram) and not fileio.is_remote("/tmp/x") and \
        not fileio.is_remote("relative/gs:/x")
    fileio.makedirs(fileio.join(ram, "a", "b"))
    with fileio.open(fileio.join(ram, "a", "b", "f.txt"), "w") as f:
        f.write("hello")
    assert gfile.isdir(f"{ram}/a/b") and _read(f"{ram}/a/b/f.txt") == b"hello"
    assert fileio.listdir(f"{ram}/a") == ["b"] and fileio.isfile(f"{ram}/a/b/f.txt")
    assert not fileio.isfile(f"{ram}/a/b") and fileio.glob(f"{ram}/a/b/*") == [f"{ram}/a/b/f.txt"]
    assert fileio.abspath(f"{ram}/a") == f"{ram}/a"
    with pytest.raises(FileNotFoundError):  # tf NotFoundError, as an OSError
        fileio.read_bytes(f"{ram}/missing")
    with pytest.raises(FileNotFoundError):
        fileio.listdir(f"{ram}/missing")
    with pytest.raises(FileExistsError):
        fileio.makedirs(f"{ram}/a/c")
        with fileio.open(f"{ram}/a/c/g", "w") as f:
            f.write("x")
        fileio.rename(f"{ram}/a/b/f.txt", f"{ram}/a/c/g")
    with fileio.open(f"{ram}/a/c/g", "w") as f:  # 'w' truncates (a raw ram:// GFile appends)
        f.write("xy")
    assert _read(f"{ram}/a/c/g") == b"xy"
    fileio.replace(f"{ram}/a/b/f.txt", f"{ram}/a/c/g")
    assert _read(f"{ram}/a/c/g") == b"hello" and not gfile.exists(f"{ram}/a/b/f.txt")
    fileio.rmtree(f"{ram}/a")
    assert not gfile.exists(f"{ram}/a/c/g")


def test_local_paths_never_import_tensorflow(tmp_path):
    code = ("import sys, numpy as np; from ptransfer.core import fileio; from ptransfer.core import fileio as atomic; "
            f"d = fileio.join({str(tmp_path)!r}, 'x'); fileio.makedirs(d); "
            "atomic.write_json(fileio.join(d, 'a.json'), [1]); "
            "atomic.write_npy(fileio.join(d, 'a.npy'), np.zeros(2)); "
            "assert sorted(fileio.listdir(d)) == ['a.json', 'a.npy'] and fileio.isdir(d); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_bank_round_trip_on_ram(ram, tmp_path):
    from ptransfer.bank import store as bank

    root = f"{ram}/bank"
    path = bank.write_entry(root, "smollm2_135m", "mr", "seed0", _prompt(), META, CURVE)
    assert path == f"{root}/smollm2_135m/mr/seed0"
    # exactly the entry's files: no temp objects left behind
    assert sorted(gfile.listdir(path)) == ["COMPLETE", "meta.json", "metrics.jsonl", "prompt.npy"]
    prompt, meta, rows = bank.read_entry(path)
    np.testing.assert_array_equal(prompt, _prompt())
    assert prompt.dtype == np.float32 and rows == CURVE
    assert (meta["backbone"], meta["task"], meta["run"], meta["prompt_length"],
            meta["d_model"]) == ("smollm2_135m", "mr", "seed0", 4, 6)

    # same bytes as a local bank entry, and COMPLETE holds their real sha256
    local = bank.write_entry(str(tmp_path / "bank"), "smollm2_135m", "mr", "seed0", _prompt(),
                             META, CURVE)
    for name in ("prompt.npy", "metrics.jsonl"):
        with open(os.path.join(local, name), "rb") as f:
            assert _read(f"{path}/{name}") == f.read(), name
    digests = json.loads(_read(f"{path}/COMPLETE"))["sha256"]
    assert digests == {n: hashlib.sha256(_read(f"{path}/{n}")).hexdigest()
                       for n in ("prompt.npy", "meta.json", "metrics.jsonl")}

    bank.write_entry(root, "smollm2_135m", "sst2", "seed0", _prompt(1), META, [])
    bank.write_entry(root, "t5_tiny", "mr", "seed0", _prompt(2, width=8), META, [])
    assert [e.ref for e in bank.list_entries(root)] == [
        "smollm2_135m/mr/seed0", "smollm2_135m/sst2/seed0", "t5_tiny/mr/seed0"]
    assert [e.ref for e in bank.list_entries(root, task="mr")] == [
        "smollm2_135m/mr/seed0", "t5_tiny/mr/seed0"]
    assert bank.resolve_ref(root, path).ref == "smollm2_135m/mr/seed0"
    assert bank.resolve_ref(root, path + "/").path == path
    np.testing.assert_array_equal(bank.find_entry(root, "t5_tiny", "mr").read()[0], _prompt(2, width=8))

    # an existing entry is refused without overwrite, replaced with it
    with pytest.raises(CheckpointError, match="already exists"):
        bank.write_entry(root, "smollm2_135m", "mr", "seed0", _prompt(5), META, CURVE)
    np.testing.assert_array_equal(bank.read_entry(path)[0], _prompt())
    bank.write_entry(root, "smollm2_135m", "mr", "seed0", _prompt(5), META, CURVE[:1],
                     overwrite=True)
    prompt, _, rows = bank.read_entry(path)
    np.testing.assert_array_equal(prompt, _prompt(5))
    assert rows == CURVE[:1]
    assert sorted(gfile.listdir(path)) == ["COMPLETE", "meta.json", "metrics.jsonl", "prompt.npy"]


def test_bank_checksum_and_complete_marker_on_ram(ram):
    from ptransfer.bank import store as bank

    root = f"{ram}/bank"
    path = bank.write_entry(root, "t5_tiny", "mr", "seed0", _prompt(), META, CURVE)
    good = _read(f"{path}/prompt.npy")

    # a modified prompt.npy fails its checksum
    buf = io.BytesIO()
    np.save(buf, _prompt() + 1.0, allow_pickle=False)
    gfile.remove(f"{path}/prompt.npy")  # (a ram:// GFile "wb" appends to an existing file)
    with gfile.GFile(f"{path}/prompt.npy", "wb") as f:
        f.write(buf.getvalue())
    with pytest.raises(CheckpointError, match="checksum"):
        bank.read_entry(path)
    gfile.remove(f"{path}/prompt.npy")
    with gfile.GFile(f"{path}/prompt.npy", "wb") as f:
        f.write(good)
    np.testing.assert_array_equal(bank.read_entry(path)[0], _prompt())

    # without COMPLETE (an interrupted write) the entry is neither listed nor read
    gfile.remove(f"{path}/COMPLETE")
    assert bank.list_entries(root) == [] and not bank.is_complete(path)
    with pytest.raises(CheckpointError, match="incomplete"):
        bank.read_entry(path)
    with pytest.raises(DataError, match="no complete entries"):
        bank.list_entries(root, require=True)
    # ... and the next write of that run replaces the leftover
    bank.write_entry(root, "t5_tiny", "mr", "seed0", _prompt(3), META, CURVE)
    np.testing.assert_array_equal(bank.read_entry(path)[0], _prompt(3))
    assert [e.ref for e in bank.list_entries(root)] == ["t5_tiny/mr/seed0"]

    # a failing metrics generator leaves no entry behind
    def rows():
        yield CURVE[0]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        bank.write_entry(root, "t5_tiny", "sst2", "seed0", _prompt(), META, rows())
    assert not gfile.exists(f"{root}/t5_tiny/sst2/seed0")
    assert [e.ref for e in bank.list_entries(root)] == ["t5_tiny/mr/seed0"]
    with pytest.raises(DataError, match="does not exist"):
        bank.list_entries(f"{ram}/nobank")


def test_metrics_jsonl_on_ram(ram):
    from ptransfer.training.metric_writers import JsonlCurve

    path = f"{ram}/model/metrics.jsonl"
    gfile.makedirs(f"{ram}/model")
    curve = JsonlCurve(path, resume_step=0)
    recs = [{"step": s, "accuracy": a} for s, a in ((1, 0.5), (2, 0.75), (3, 1.0))]
    for r in recs:
        curve.append(r)
    assert _read(path).decode() == "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs)
    # a cut-off last line (a kill mid-append) is dropped; resume keeps steps <= 2
    with gfile.GFile(path, "a") as f:
        f.write('{"step": 4, "accu')
    resumed = JsonlCurve(path, resume_step=2)
    assert resumed.records == recs[:2]
    assert _read(path).decode() == "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs[:2])
    resumed.append({"step": 3, "accuracy": 0.9})
    assert JsonlCurve(path, resume_step=10).records == recs[:2] + [{"step": 3, "accuracy": 0.9}]
    assert sorted(gfile.listdir(f"{ram}/model")) == ["metrics.jsonl"]  # no temp left


def test_tensorboard_events_on_ram(ram):
    pytest.importorskip("tensorboardX")
    from ptransfer.training.metric_writers import TensorBoard

    tb = TensorBoard(f"{ram}/model/tb", resume_step=0)
    tb.scalars("eval", 5, {"accuracy": 0.25})
    tb.scalars("train", 5, {"loss": 1.5})
    tb.close()
    events = gfile.glob(f"{ram}/model/tb/eval/events.out.tfevents.*")
    assert len(events) == 1
    values = [(e.step, v.tag, v.simple_value) for e in tf.compat.v1.train.summary_iterator(events[0])
              for v in e.summary.value]
    assert values == [(5, "accuracy", 0.25)]


def test_atomic_writes_on_ram(ram, tmp_path):
    gfile.makedirs(ram)
    data = {"a": [1, 2.5, None], "b": "x"}
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert atomic.write_json(f"{ram}/r.json", data) == f"{ram}/r.json"
    atomic.write_npy(f"{ram}/p.npy", arr)
    assert json.loads(_read(f"{ram}/r.json")) == data
    got = np.load(io.BytesIO(_read(f"{ram}/p.npy")), allow_pickle=False)
    np.testing.assert_array_equal(got, arr)
    assert got.dtype == np.float32
    # byte-for-byte what the local writer produces
    atomic.write_json(str(tmp_path / "r.json"), data)
    atomic.write_npy(str(tmp_path / "p.npy"), arr)
    assert _read(f"{ram}/r.json") == (tmp_path / "r.json").read_bytes()
    assert _read(f"{ram}/p.npy") == (tmp_path / "p.npy").read_bytes()
    # overwriting replaces the content and leaves no temp object
    atomic.write_json(f"{ram}/r.json", [3])
    assert json.loads(_read(f"{ram}/r.json")) == [3]
    assert sorted(gfile.listdir(ram)) == ["p.npy", "r.json"]


def test_run_identity_on_ram(ram):
    from ptransfer.training import checkpointing

    model_dir = f"{ram}/model"
    checkpointing.check_run_identity(model_dir, {"task": "mr", "seed": 0}, write=False)
    assert not gfile.exists(model_dir)
    checkpointing.check_run_identity(model_dir, {"task": "mr", "seed": 0})
    assert json.loads(_read(f"{model_dir}/run_identity.json")) == {"seed": 0, "task": "mr"}
    assert gfile.listdir(model_dir) == ["run_identity.json"]
    checkpointing.check_run_identity(model_dir, {"task": "mr", "seed": 0})
    with pytest.raises(CheckpointError, match="different run"):
        checkpointing.check_run_identity(model_dir, {"task": "mr", "seed": 1})


def test_trainer_writes_its_bank_entry_to_ram(ram, tmp_path, monkeypatch):
    """A real (tiny) training run with a local model dir and bank_dir on ram://.

    (A ram:// MODEL_DIR is not tested: orbax's etils.epath knows gs:// but not
    ram://, so the checkpoints cannot go there.)"""
    from _trainer_common import backbone, register_tiny_yesno, write_justice

    from ptransfer.bank import store as bank
    from ptransfer.training.optimizer import OptimizerConfig
    from ptransfer.training.trainer import TrainConfig, Trainer

    register_tiny_yesno(monkeypatch)
    data_dir = write_justice(str(tmp_path / "data"))
    model_dir = tmp_path / "run"
    cfg = TrainConfig(backbone="preset:t5_tiny", task="tiny_yesno", model_dir=str(model_dir),
                      prompt_length=4, init_from="vocab", batch_size=8, train_steps=4,
                      optimizer=OptimizerConfig(name="adamw", learning_rate=0.1,
                                                weight_decay=0.0),
                      input_length=8, target_length=4, eval_split="train", eval_every=2,
                      eval_examples=None, checkpoint_every=0, data_dir=data_dir,
                      progress=False, bank_dir=f"{ram}/bank", run_name="seed0")
    result = Trainer(cfg, backbone=backbone("t5_tiny")).run()
    assert result.bank_entry == f"{ram}/bank/t5_tiny/tiny_yesno/seed0"
    prompt, meta, rows = bank.read_entry(result.bank_entry)
    np.testing.assert_array_equal(prompt, result.best_prompt)
    assert rows == result.curve and [r["step"] for r in rows] == [0, 2, 4]
    assert meta["provenance"]["model_dir"] == str(model_dir)
    assert [e.ref for e in bank.list_entries(f"{ram}/bank")] == ["t5_tiny/tiny_yesno/seed0"]
    assert not (model_dir / "bank").exists()
    assert sorted(os.listdir(model_dir)) == [".lock", "best_prompt.npy", "checkpoints",
                                             "metrics.jsonl", "prompt.npy", "run_identity.json",
                                             "tb"]


def test_bank_cli_on_a_ram_bank(ram, tmp_path, capsys):
    from ptransfer.bank import store as bank
    from ptransfer.cli.bank import main as bank_main

    root = f"{ram}/bank"
    bank.write_entry(root, "bb", "mr", "seed0", _prompt(), {**META, "family": "llama"}, CURVE)
    assert bank_main(["bank", "list", "--bank", root, "--json"]) == 0
    assert [e["path"] for e in json.loads(capsys.readouterr().out)] == [f"{root}/bb/mr/seed0"]
    assert bank_main(["bank", "show", "--bank", root, f"{root}/bb/mr/seed0"]) == 0
    assert "float32 [4, 6]" in capsys.readouterr().out
    adapter = str(tmp_path / "adapter")  # export to a local dir, import back into ram://
    assert bank_main(["bank", "export", "--bank", root, "bb/mr", "--out", adapter]) == 0
    assert bank_main(["bank", "import", "--bank", root, adapter, "--backbone", "bb",
                      "--task", "mr", "--run", "from_peft"]) == 0
    np.testing.assert_array_equal(bank.read_entry(f"{root}/bb/mr/from_peft")[0], _prompt())


def test_prompt_init_from_a_ram_bank_entry_and_npy(ram):
    """TPT's INIT_FROM may name a bank entry or a .npy on a remote path."""
    from ptransfer import prompts
    from ptransfer.bank import store as bank

    entry = bank.write_entry(f"{ram}/bank", "t5_tiny", "mr", "seed0", _prompt(3), META, CURVE)
    prompt, meta = prompts.load_prompt_file(entry)
    np.testing.assert_array_equal(prompt, _prompt(3))
    assert meta["task"] == "mr"
    atomic.write_npy(f"{ram}/p.npy", _prompt(4))
    assert prompts.parse_init_from(f"{ram}/p.npy") == ("file", f"{ram}/p.npy")
    np.testing.assert_array_equal(prompts.load_prompt_file(f"{ram}/p.npy")[0], _prompt(4))
    with pytest.raises(DataError, match="does not exist"):
        prompts.load_prompt_file(f"{ram}/missing.npy")
