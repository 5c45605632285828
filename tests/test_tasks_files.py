"""The 5 file-backed paper tasks, from small files in each release's own format."""

import csv
import os

import pytest

seqio = pytest.importorskip("seqio")

import tasks  # noqa: E402
from ptransfer import data as features  # noqa: E402
from ptransfer.core.errors import DataError  # noqa: E402
from tasks import release_files  # noqa: E402

LENGTHS = {"inputs": 128, "targets": 16}
POLARITIES = ("negative", "neutral", "positive", "conflict")


def _semeval_xml(sentences) -> str:
    """SemEval-2014 Task 4 XML (restaurants also carry aspectCategories, ignored)."""
    out = ['<?xml version="1.0" encoding="UTF-8" standalone="yes"?>', "<sentences>"]
    for sid, text, terms in sentences:
        out.append(f'  <sentence id="{sid}">\n    <text>{text}</text>')
        if terms:
            out.append("    <aspectTerms>")
            for term, pol in terms:
                start = text.find(term)
                out.append(f'      <aspectTerm term="{term}" polarity="{pol}" from="{start}" '
                           f'to="{start + len(term)}"/>')
            out.append("    </aspectTerms>")
        out.append('    <aspectCategories><aspectCategory category="food" polarity="positive"/>'
                   "</aspectCategories>")
        out.append("  </sentence>")
    out.append("</sentences>")
    return "\n".join(out)


def _train_sentences(prefix):
    # 20 sentences with aspect terms + one without (skipped by the reader).
    sents = [(f"{prefix}{i}", f"The {prefix} screen {i} and keyboard are here.",
              [("screen", POLARITIES[i % 4]), ("keyboard", POLARITIES[(i + 1) % 4])])
             for i in range(20)]
    return sents + [(f"{prefix}x", "No aspects in this one.", [])]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    sem = root / "semeval2014_task4"
    sem.mkdir()
    for prefix, train, test in (("laptop", "Laptop_Train_v2.xml", "Laptops_Test_Gold.xml"),
                                ("resto", "Restaurants_Train_v2.xml",
                                 "Restaurants_Test_Gold.xml")):
        (sem / train).write_text(_semeval_xml(_train_sentences(prefix)), encoding="utf-8")
        (sem / test).write_text(_semeval_xml(
            [(f"t{prefix}", "Battery life &amp; price: great.",
              [("Battery life", "positive"), ("price", "conflict")])]), encoding="utf-8")
    tw = root / "tweeteval" / "sentiment"
    tw.mkdir(parents=True)
    for split, rows in {"train": [("I love this! #happy", 2), ("meh.", 1), ("awful day", 0)],
                        "val": [("so good @user", 2), ("worst ever", 0)],
                        "test": [("ok I guess", 1)]}.items():
        (tw / f"{split}_text.txt").write_text("".join(t + " \n" for t, _ in rows), encoding="utf-8")
        (tw / f"{split}_labels.txt").write_text("".join(f"{lab}\n" for _, lab in rows))
    for name, fields in (("deontology", ("scenario", "excuse")), ("justice", ("scenario",))):
        d = root / "ethics" / name
        d.mkdir(parents=True)
        for suffix in ("train", "test", "test_hard"):
            with open(d / f"{name}_{suffix}.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["label", *fields])
                for i in range(3):
                    w.writerow([i % 2] + [f"{suffix} {k}, with comma {i}" for k in fields])
    return str(root)


def _decode_batches(task, split, vocab):
    got = []
    for b in features.iterate_batches(task, split, 4, LENGTHS, shuffle=False, repeat=False):
        for i in range(len(b["valid"])):
            if b["valid"][i]:
                ins = b["inputs"][i][b["inputs_mask"][i] == 1].tolist()
                tgt = b["targets"][i][b["targets_mask"][i] == 1].tolist()
                got.append((vocab.decode(ins), vocab.decode(tgt), int(b["label"][i])))
    return got


def test_semeval_laptop_end_to_end(data_dir):
    vocab = seqio.ByteVocabulary()
    task = tasks.get_task("laptop", vocab, add_eos=False, data_dir=data_dir)
    assert isinstance(task.source, seqio.FunctionDataSource)
    test = _decode_batches(task, "test", vocab)
    assert sorted(test) == sorted([
        ("sentence: Battery life & price: great. aspect: Battery life sentiment:", "positive", 2),
        ("sentence: Battery life & price: great. aspect: price sentiment:", "conflict", 3)])
    train, val = _decode_batches(task, "train", vocab), _decode_batches(task, "validation", vocab)
    # 20 sentences x 2 aspect terms, 10% of sentences held out; no sentence in both.
    assert (len(train), len(val)) == (36, 4)
    sent = lambda rows: {r[0].split(" aspect:")[0] for r in rows}  # noqa: E731
    assert not sent(train) & sent(val)
    for inputs, target, label in train + val:
        assert target == tasks.get_spec("laptop").label_words[label]
        i = int(inputs.split(" screen ")[1].split()[0])
        want = POLARITIES[i % 4] if "aspect: screen" in inputs else POLARITIES[(i + 1) % 4]
        assert target == want


def test_semeval_restaurant_reads_its_own_files(data_dir):
    vocab = seqio.ByteVocabulary()
    task = tasks.get_task("restaurant", vocab, add_eos=True, data_dir=data_dir)
    rows = _decode_batches(task, "train", vocab)
    assert rows and all("resto screen" in r[0] for r in rows)


def test_tweeteval_end_to_end(data_dir):
    vocab = seqio.ByteVocabulary()
    task = tasks.get_task("tweeteval", vocab, add_eos=True, data_dir=data_dir)
    assert _decode_batches(task, "validation", vocab) == [
        ("tweet: so good @user sentiment:", "positive", 2),
        ("tweet: worst ever sentiment:", "negative", 0)]


@pytest.mark.parametrize("name", ["deontology", "justice"])
def test_ethics_end_to_end(name, data_dir):
    vocab = seqio.ByteVocabulary()
    task = tasks.get_task(name, vocab, add_eos=True, data_dir=data_dir)
    rows = _decode_batches(task, "test", vocab)  # test = *_test_hard.csv
    assert len(rows) == 3
    first = rows[0][0]
    if name == "deontology":
        assert first == ("scenario: test_hard scenario, with comma 0 excuse: test_hard excuse, "
                         "with comma 0 judgement:")
    else:
        assert first == "scenario: test_hard scenario, with comma 0 judgement:"
    assert [r[1] for r in rows] == ["unacceptable", "acceptable", "unacceptable"]


def test_missing_file_names_it_where_it_goes_and_where_it_is_published(tmp_path):
    task = tasks.get_task("tweeteval", seqio.ByteVocabulary(), add_eos=True,
                          data_dir=str(tmp_path))
    with pytest.raises(DataError) as e:
        next(features.iterate_batches(task, "train", 2, LENGTHS))
    msg = str(e.value)
    assert os.path.join(str(tmp_path), "tweeteval", "sentiment", "train_text.txt") in msg
    assert "github.com/cardiffnlp/tweeteval" in msg


def test_missing_data_dir_for_semeval(tmp_path):
    spec = tasks.get_spec("restaurant")
    with pytest.raises(DataError) as e:
        release_files.read_split(spec, str(tmp_path / "nowhere"), "test")
    msg = str(e.value)
    assert "Restaurants_Test_Gold.xml" in msg and "semeval2014_task4" in msg
    assert "alt.qcri.org/semeval2014/task4" in msg


def test_label_outside_the_verbalizer_is_an_error(tmp_path):
    sem = tmp_path / "semeval2014_task4"
    sem.mkdir()
    (sem / "Laptop_Train_v2.xml").write_text(_semeval_xml([("7", "Nice fan.", [("fan", "mixed")])]))
    with pytest.raises(DataError, match=r"sentence id=7.*'mixed' is outside the verbalizer"):
        release_files.read_split(tasks.get_spec("laptop"), str(tmp_path), "train")
    tw = tmp_path / "tweeteval" / "sentiment"
    tw.mkdir(parents=True)
    (tw / "test_text.txt").write_text("a\nb\n")
    (tw / "test_labels.txt").write_text("1\n3\n")
    with pytest.raises(DataError, match=r"test_labels.txt line 2: label '3' is outside"):
        release_files.read_split(tasks.get_spec("tweeteval"), str(tmp_path), "test")
