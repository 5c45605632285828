"""Class-balanced training streams: equal class counts from a skewed split,
seeded, exactly resumable."""

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")

import tasks  # noqa: E402
from ptransfer import data  # noqa: E402
from ptransfer.core.errors import ConfigError, DataError  # noqa: E402

BYTE = seqio.ByteVocabulary()
# 9 examples: label 2 (positive) x6, label 0 x2, label 1 x1.
LABELS = [2, 2, 0, 2, 2, 1, 2, 0, 2]
LENGTHS = {"inputs": 24, "targets": 4}


def _write(root, labels):
    d = root / "tweeteval" / "sentiment"
    d.mkdir(parents=True)
    texts = [f"tweet {i} " + "q" * i for i in range(len(labels))]
    for split in ("train", "val", "test"):
        (d / f"{split}_text.txt").write_text("".join(t + "\n" for t in texts))
        (d / f"{split}_labels.txt").write_text("".join(f"{lab}\n" for lab in labels))
    return str(root)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return tasks.get_task("tweeteval", BYTE, add_eos=False,
                          data_dir=_write(tmp_path_factory.mktemp("skew"), LABELS))


def _batches(task, n, **kw):
    stream = data.iterate_batches(task, "train", 6, LENGTHS, **kw)
    out = [next(stream) for _ in range(n)]
    stream.close()
    return out


def test_balanced_stream_has_equal_class_counts_and_resumes_exactly(task):
    batches = _batches(task, 8, seed=3, balance_classes=True)
    for b in batches:  # 6 = 2 of each of the 3 classes, in every batch
        np.testing.assert_array_equal(np.bincount(b["label"], minlength=3), [2, 2, 2])
    # Every example of a class appears (the single label-1 example, six times in 8 batches).
    inputs = {tuple(row) for b in batches for row in b["inputs"]}
    assert len(inputs) == len(LABELS)
    # The natural stream keeps the split's skew.
    natural = np.concatenate([b["label"] for b in _batches(task, 6, seed=3)])
    np.testing.assert_array_equal(np.bincount(natural, minlength=3), [8, 4, 24])
    # Resume at batch 5 sees the very batches of an uninterrupted stream.
    resumed = _batches(task, 3, seed=3, start_step=5, balance_classes=True)
    for a, b in zip(batches[5:], resumed):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    # The seed changes the order within classes.
    other = _batches(task, 8, seed=4, balance_classes=True)
    assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(batches, other))


def test_balanced_stream_refusals(task, tmp_path):
    with pytest.raises(ConfigError, match="training streams"):
        next(data.iterate_batches(task, "train", 6, LENGTHS, shuffle=False, repeat=False,
                                  balance_classes=True))
    no_neutral = tasks.get_task("tweeteval", BYTE, add_eos=True,
                                data_dir=_write(tmp_path, [0, 2, 2, 0]))
    with pytest.raises(DataError, match=r"no example of label 1 \('neutral'\)"):
        next(data.iterate_batches(no_neutral, "train", 2, LENGTHS, balance_classes=True))


BASE = dict(backbone="preset:llama_tiny", model_dir="unused", prompt_length=4, init_from="random",
            batch_size=2, train_steps=1)


@pytest.mark.parametrize("name, balanced", [
    ("tweets", True), ("sms_spam", True), ("trec", True),    # class ratios 2.3, 7.2, 14.7
    ("mr", False), ("amazon", False), ("nyt", False),       # 1.02, 1.43, 1.24
    ("squad", False),                                         # generative: no classes
])
def test_auto_balances_exactly_the_skewed_offline_corpora(name, balanced):
    from ptransfer.training.trainer import SKEWED_RATIO, TrainConfig

    spec = tasks.get_spec(name)
    cfg = TrainConfig(task=name, **BASE)
    assert cfg.balance_classes == "auto"
    assert cfg.effective_balance_classes(spec) is balanced
    counts = spec.class_counts.get("train") if spec.is_classification else None
    # the rule, from the spec's counts
    assert balanced == bool(counts and max(counts) > SKEWED_RATIO * min(counts))
    forced = TrainConfig(task=name, balance_classes=False, **BASE)
    assert forced.effective_balance_classes(spec) is False


def test_balance_classes_value_is_checked():
    from ptransfer.training.trainer import TrainConfig

    with pytest.raises(ConfigError, match="balance_classes 'yes'"):
        TrainConfig(task="mr", balance_classes="yes", **BASE).validate()


def test_shuffle_buffer_size_reaches_the_stream_and_the_run_identity(task):
    from ptransfer.training.trainer import TrainConfig

    default = TrainConfig(task="mr", **BASE)
    assert default.shuffle_buffer_size == data.DEFAULT_SHUFFLE_BUFFER
    assert "shuffle_buffer_size" not in default.identity()
    small = TrainConfig(task="mr", shuffle_buffer_size=2, **BASE)
    assert small.identity()["shuffle_buffer_size"] == 2  # another data order: another run
    with pytest.raises(ConfigError, match="SHUFFLE_BUFFER_SIZE"):
        TrainConfig(task="mr", shuffle_buffer_size=0, **BASE).validate()
    # a buffer of 1 keeps the split's order; a full one shuffles it
    ids = lambda **kw: [b["inputs"].tolist() for b in _batches(task, 1, seed=0, **kw)]  # noqa: E731
    assert ids(shuffle_buffer_size=1) == ids(shuffle=False, repeat=True)
    assert ids(shuffle_buffer_size=1) != ids(shuffle_buffer_size=64)
