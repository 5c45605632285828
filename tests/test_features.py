"""ptransfer.data: the shared batch layout, truncation and resumable streams."""

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")

import tasks  # noqa: E402
from ptransfer import data as features  # noqa: E402
from ptransfer.core.errors import ConfigError, DataError  # noqa: E402

BYTE = seqio.ByteVocabulary()
TEXTS = [f"tweet number {i} " + "x" * (3 * i + 1) for i in range(10)]
LABELS = [i % 3 for i in range(10)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    d = root / "tweeteval" / "sentiment"
    d.mkdir(parents=True)
    for split, n in (("train", 10), ("val", 10), ("test", 1)):
        (d / f"{split}_text.txt").write_text("".join(t + "\n" for t in TEXTS[:n]))
        (d / f"{split}_labels.txt").write_text("".join(f"{lab}\n" for lab in LABELS[:n]))
    return str(root)


@pytest.fixture(scope="module")
def task_eos(data_dir):
    return tasks.get_task("tweeteval", BYTE, add_eos=True, data_dir=data_dir)


@pytest.fixture(scope="module")
def task_noeos(data_dir):
    return tasks.get_task("tweeteval", BYTE, add_eos=False, data_dir=data_dir)


def _render(i):
    return f"tweet: {TEXTS[i]} sentiment:"


def _eval(task, lengths, **kw):
    return list(features.iterate_batches(task, "validation", 4, lengths, shuffle=False,
                                         repeat=False, **kw))


def test_layout_left_padded_inputs_right_padded_targets(task_eos):
    batches = _eval(task_eos, {"inputs": 96, "targets": 12})
    b = batches[0]
    assert set(b) == {"inputs", "inputs_mask", "targets", "targets_mask", "label", "valid"}
    assert all(v.dtype == np.int32 for v in b.values())
    assert b["inputs"].shape == (4, 96) and b["targets"].shape == (4, 12)
    for i in range(4):
        want_in = list(BYTE.encode(_render(i))) + [1]
        n = len(want_in)
        assert b["inputs"][i].tolist() == [0] * (96 - n) + want_in  # left-padded, EOS last
        assert b["inputs_mask"][i].tolist() == [0] * (96 - n) + [1] * n
        word = ("negative", "neutral", "positive")[LABELS[i]]
        want_t = list(BYTE.encode(word)) + [1]
        assert b["targets"][i].tolist() == want_t + [0] * (12 - len(want_t))  # right-padded
        assert b["targets_mask"][i].tolist() == [1] * len(want_t) + [0] * (12 - len(want_t))
    assert b["label"].tolist() == LABELS[:4]


def test_truncation_rules(task_eos, task_noeos):
    i = 9  # the longest text
    full = list(BYTE.encode(_render(i)))
    lengths = {"inputs": 20, "targets": 4}
    right = _eval(task_eos, lengths)[2]["inputs"][1].tolist()
    assert right == full[:19] + [1]  # start kept, EOS kept
    left = _eval(task_eos, lengths, truncate_inputs="left")[2]["inputs"][1].tolist()
    assert left == full[-19:] + [1]  # end (the cue) kept, EOS kept
    plain = _eval(task_noeos, lengths)[2]["inputs"][1].tolist()
    assert plain == full[:20]
    plain_left = _eval(task_noeos, lengths, truncate_inputs="left")[2]["inputs"][1].tolist()
    assert plain_left == full[-20:] and BYTE.decode(plain_left).endswith("sentiment:")
    # targets: "neutral" (label 1 of example 1... use example 9: label 0 'negative')
    tgt = _eval(task_eos, lengths)[2]["targets"][1].tolist()
    assert tgt == list(BYTE.encode("neg")) + [1]
    with pytest.raises(ConfigError, match="truncate_inputs"):
        _eval(task_eos, lengths, truncate_inputs="middle")
    with pytest.raises(ConfigError, match="positive 'targets'"):
        _eval(task_eos, {"inputs": 8})


def test_eval_stream_covers_every_example_once_and_fills_the_last_batch(task_eos):
    batches = _eval(task_eos, {"inputs": 64, "targets": 12})
    assert len(batches) == 3
    assert batches[-1]["valid"].tolist() == [1, 1, 0, 0]
    last = batches[-1]
    for k in ("inputs", "targets", "label"):  # filler rows repeat the last real example
        assert (last[k][2] == last[k][1]).all() and (last[k][3] == last[k][1]).all()
    labels = np.concatenate([b["label"][b["valid"] == 1] for b in batches])
    assert labels.tolist() == LABELS == features.references(task_eos, "validation")


def _signature(batch):
    return [BYTE.decode(r[m == 1].tolist()) for r, m in zip(batch["inputs"], batch["inputs_mask"])]


def _stream(task, n, **kw):
    it = features.iterate_batches(task, "train", 4, {"inputs": 64, "targets": 12}, **kw)
    return [_signature(next(it)) for _ in range(n)]


def test_stream_is_deterministic_resumable_and_reshuffled_per_epoch(task_eos):
    run = _stream(task_eos, 8, seed=7)  # 32 examples = 3.2 epochs of 10
    assert _stream(task_eos, 8, seed=7) == run
    assert _stream(task_eos, 5, seed=7, start_step=3) == run[3:]  # exact resume
    flat = [s for b in run for s in b]
    epochs = [flat[0:10], flat[10:20], flat[20:30]]
    for e in epochs:  # every epoch is a permutation of the split
        assert sorted(e) == sorted(_render(i) for i in range(10))
    assert epochs[0] != epochs[1]  # re-shuffled each epoch
    assert _stream(task_eos, 3, seed=8) != run[:3]
    assert flat[:10] != [_render(i) for i in range(10)]  # shuffled at all


def test_shards_partition_the_split(task_eos):
    seen = []
    for shard in range(3):
        for b in features.iterate_batches(task_eos, "validation", 2, {"inputs": 64, "targets": 12},
                                          shard_index=shard, num_shards=3, shuffle=False,
                                          repeat=False):
            seen += [s for s, v in zip(_signature(b), b["valid"]) if v]
    assert sorted(seen) == sorted(_render(i) for i in range(10))
    with pytest.raises(ConfigError, match="shard_index 3"):
        next(features.iterate_batches(task_eos, "train", 2, {"inputs": 8, "targets": 8},
                                      shard_index=3, num_shards=3))


def test_small_split_repeats_into_full_batches_and_empty_shard_is_an_error(task_eos):
    it = features.iterate_batches(task_eos, "test", 4, {"inputs": 64, "targets": 12})
    b = next(it)  # 1 example, repeated
    assert b["valid"].tolist() == [1, 1, 1, 1] and len(set(_signature(b))) == 1
    with pytest.raises(DataError, match="yields no examples"):
        next(features.iterate_batches(task_eos, "test", 2, {"inputs": 8, "targets": 8},
                                      shard_index=1, num_shards=2))


def test_label_candidates_match_the_task_targets(task_eos):
    cands, mask = features.label_candidates("tweeteval", BYTE, True, 12)
    b = _eval(task_eos, {"inputs": 64, "targets": 12})[0]
    for i in range(4):
        np.testing.assert_array_equal(b["targets"][i], cands[b["label"][i]])
        np.testing.assert_array_equal(b["targets_mask"][i], mask[b["label"][i]])
