"""The 12 TFDS-backed paper tasks, end to end through real TFRecords.

For each dataset the test defines a builder class that IS the real TFDS
builder (same name, configs, version and features: it subclasses it) except
that its split generators yield a few examples written here. The builder
prepares real TFRecords + dataset_info in a temp data dir, and the task's
seqio.TfdsDataSource reads them back with the real builder, as it would read
a dataset prepared by `tfds build`.
"""

import dataclasses

import pytest

seqio = pytest.importorskip("seqio")
tfds = pytest.importorskip("tensorflow_datasets")

import tasks  # noqa: E402
from ptransfer import data as features  # noqa: E402
from ptransfer.core.errors import DataError  # noqa: E402

LENGTHS = {"inputs": 160, "targets": 48}

# tfds split name -> rows, per task. Labels are the TFDS ClassLabel indices.
RAW = {
    "imdb": {
        "train": [{"text": "A wonderful, moving film.", "label": 1},
                  {"text": "Dull and far too long.", "label": 0}],
        "test": [{"text": "Café scenes were lovely.", "label": 1},
                 {"text": "I walked out.", "label": 0}, {"text": "Mediocre plot.", "label": 0}],
    },
    "sst2": {
        "train": [{"idx": 0, "sentence": "it is great", "label": 1},
                  {"idx": 1, "sentence": "it is awful", "label": 0}],
        "validation": [{"idx": 0, "sentence": "a gem", "label": 1}],
        "test": [{"idx": 0, "sentence": "unlabeled, as in GLUE", "label": -1}],
    },
    "movie_rationales": {
        s: [{"review": f"{s} review number {i}", "label": i % 2, "evidences": [f"ev {i}"]}
            for i in range(3)] for s in ("train", "validation", "test")},
    "mnli": {
        "train": [{"idx": 0, "premise": "A man sleeps.", "hypothesis": "A man rests.",
                   "label": 0}],
        "validation_matched": [
            {"idx": 0, "premise": "Kids play.", "hypothesis": "Nobody plays.", "label": 2},
            {"idx": 1, "premise": "It rains.", "hypothesis": "It is wet.", "label": 1}],
        "validation_mismatched": [
            {"idx": 0, "premise": "MISMATCHED premise", "hypothesis": "x", "label": 0}],
    },
    "snli": {
        s: [{"premise": f"{s} premise {i}", "hypothesis": f"hypothesis {i}", "label": lab}
            for i, lab in enumerate([0, 1, 2, -1])] for s in ("train", "validation", "test")},
    "qnli": {
        "train": [{"idx": 0, "question": "Who?", "sentence": "Him.", "label": 0}],
        "validation": [{"idx": 0, "question": "Where?", "sentence": "Blue.", "label": 1}],
    },
    "qqp": {
        "train": [{"idx": 0, "question1": "How old?", "question2": "What age?", "label": 1}],
        "validation": [{"idx": 0, "question1": "Why?", "question2": "When?", "label": 0}],
    },
    "mrpc": {
        "train": [{"idx": 0, "sentence1": "He left.", "sentence2": "He went.", "label": 1}],
        "validation": [{"idx": 0, "sentence1": "Up.", "sentence2": "Down.", "label": 0}],
    },
    "squad": {
        s: [{"id": f"{s}{i}", "title": "Broncos", "context": f"The Denver Broncos won {i}.",
             "question": f"Who won {i}?",
             "answers": {"text": ["Denver Broncos", "the Broncos"], "answer_start": [4, 0]}}
            for i in range(2)] for s in ("train", "validation")},
    "nq_open": {
        "train": [{"question": "capital of france", "answer": ["Paris"]}],
        "validation": [{"question": "who wrote hamlet", "answer": ["Shakespeare",
                                                                  "William Shakespeare"]}],
    },
    "multi_news": {
        s: [{"document": f"{s} doc one ||||| doc two", "summary": f"– {s} summary."}]
        for s in ("train", "validation", "test")},
    "samsum": {
        s: [{"id": f"{s}1", "dialogue": "Amanda: cookies?\nJerry: sure!",
             "summary": f"Amanda offers cookies ({s})."}] for s in ("train", "validation", "test")},
}


def _test_builder(tfds_name, rows_by_split):
    """A builder class identical to the real one except for its data."""
    real = tfds.builder_cls(tfds_name.split("/")[0])

    class TestBuilder(real, skip_registration=True):
        name = real.name

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(rows) for split, rows in rows_by_split.items()}

        def _generate_examples(self, rows):
            for i, row in enumerate(rows):
                yield i, row

    return TestBuilder


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    tfds.disable_progress_bar()
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    for name, rows in RAW.items():
        source = tasks.get_spec(name).source
        builder_cls = _test_builder(source.tfds_name, rows)
        config = source.tfds_name.split("/")[1] if "/" in source.tfds_name else None
        builder = builder_cls(data_dir=data_dir, **({"config": config} if config else {}))
        builder.download_and_prepare()
    return data_dir


def _expected(spec, row):
    inputs = spec.render(row)
    if spec.is_classification:
        return inputs, spec.label_words[row["label"]], row["label"]
    if spec.answers_key:
        golds = row["answers"]["text"] if "answers" in row else row["answer"]
        return inputs, golds[0], tuple(golds)
    return inputs, row[spec.target_key], row[spec.target_key]


def _decoded(vocab, batch):
    out = []
    for i in range(len(batch["valid"])):
        if not batch["valid"][i]:
            continue
        ins = batch["inputs"][i][batch["inputs_mask"][i] == 1].tolist()
        tgt = batch["targets"][i][batch["targets_mask"][i] == 1].tolist()
        assert ins[-1] == vocab.eos_id and tgt[-1] == vocab.eos_id  # add_eos=True
        out.append((vocab.decode(ins[:-1]), vocab.decode(tgt[:-1])))
    return out


def test_real_builder_metadata_matches_the_specs(tfds_dir, tmp_path):
    """What seqio reads back (TFDS restores the builder from the prepared files)
    has the real builder's name, version and features; labels in verbalizer order."""
    for name in RAW:
        src = tasks.get_spec(name).source
        builder = tfds.builder(src.versioned_name, data_dir=tfds_dir)
        base, _, config = src.tfds_name.partition("/")
        kwargs = {"config": config} if config else {}
        real = tfds.builder_cls(base)(data_dir=str(tmp_path), **kwargs)
        assert (builder.name, str(builder.version)) == (real.name, str(real.version))
        assert repr(builder.info.features) == repr(real.info.features)
        assert src.prepared_dir(tfds_dir) == str(builder.data_dir)
        if src.label_names:
            assert tuple(builder.info.features["label"].names) == src.label_names


def _check_split(task, spec, vocab, split):
    rows = RAW[spec.name][spec.source.splits[split]]
    expected = [_expected(spec, r) for r in rows if r.get("label") not in spec.drop_labels]
    got, labels = [], []
    for batch in features.iterate_batches(task, split, 2, LENGTHS, shuffle=False, repeat=False):
        assert set(batch) >= {"inputs", "inputs_mask", "targets", "targets_mask", "valid"}
        assert all(v.dtype.name == "int32" for v in batch.values())
        assert batch["inputs"].shape == (2, LENGTHS["inputs"])
        assert batch["targets"].shape == (2, LENGTHS["targets"])
        got += _decoded(vocab, batch)
        if spec.is_classification:
            labels += batch["label"][batch["valid"] == 1].tolist()
    assert sorted(got) == sorted((e[0], e[1]) for e in expected), (spec.name, split)
    if spec.is_classification:  # label ids agree with the label-word targets
        assert [spec.label_words[lab] for lab in labels] == [t for _, t in got]
    else:  # QA: every gold answer; summarization: the reference
        refs = features.references(task, split)
        refs = [tuple(r) if isinstance(r, list) else r for r in refs]
        assert sorted(refs) == sorted(e[2] for e in expected), (spec.name, split)


@pytest.mark.parametrize("name", sorted(RAW))
def test_tfds_task_yields_correct_batches(name, tfds_dir):
    """validation split of each task: imdb's is TFDS 'test', mnli's 'validation_matched',
    snli drops label -1."""
    spec = tasks.get_spec(name)
    vocab = seqio.ByteVocabulary()
    task = tasks.get_task(name, vocab, add_eos=True, data_dir=tfds_dir)
    assert isinstance(task.source, seqio.TfdsDataSource)
    assert task.name == f"{name}__byte__eos"
    _check_split(task, spec, vocab, "validation")


def test_tfds_train_and_test_splits(tfds_dir):
    vocab = seqio.ByteVocabulary()
    for name, split in (("sst2", "train"), ("snli", "test")):
        task = tasks.get_task(name, vocab, add_eos=True, data_dir=tfds_dir)
        _check_split(task, tasks.get_spec(name), vocab, split)


def test_template_text_is_exactly_the_readable_form(tfds_dir):
    task = tasks.get_task("sst2", seqio.ByteVocabulary(), add_eos=False, data_dir=tfds_dir)
    (ex,) = list(task.get_dataset(None, "validation", shuffle=False).as_numpy_iterator())
    assert ex["inputs_pretokenized"].decode() == "sentence: a gem sentiment:"
    assert ex["targets_pretokenized"].decode() == "positive"
    want = list(seqio.ByteVocabulary().encode("sentence: a gem sentiment:"))
    assert ex["inputs"].tolist() == want


def test_unprepared_tfds_dataset_says_how_to_prepare(tmp_path):
    task = tasks.get_task("mrpc", seqio.ByteVocabulary(), add_eos=True, data_dir=str(tmp_path))
    with pytest.raises(DataError) as e:
        next(features.iterate_batches(task, "train", 2, LENGTHS))
    msg = str(e.value)
    assert "glue/mrpc" in msg and str(tmp_path) in msg and "tfds build glue/mrpc" in msg
    assert "microsoft.com" in msg or "gluebenchmark" in msg


def test_samsum_message_names_the_manual_download(tmp_path):
    task = tasks.get_task("samsum", seqio.ByteVocabulary(), add_eos=True, data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"corpus\.7z.*--manual_dir"):
        next(features.iterate_batches(task, "train", 2, LENGTHS))


def test_label_outside_the_verbalizer_is_an_error_not_a_drop(tfds_dir):
    """GLUE test splits carry label -1: reading one as a labeled split must fail loudly."""
    spec = tasks.get_spec("sst2")
    unlabeled = dataclasses.replace(spec, name="sst2_glue_test",
                                    source=dataclasses.replace(spec.source,
                                                               splits={"test": "test"}))
    task = tasks.get_task(unlabeled, seqio.ByteVocabulary(), add_eos=True, data_dir=tfds_dir)
    with pytest.raises(DataError, match=r"sst2_glue_test.*outside the verbalizer"):
        list(features.iterate_batches(task, "test", 2, LENGTHS, shuffle=False, repeat=False))


def test_data_check_sees_the_prepared_tfds_datasets(tfds_dir, capsys):
    from ptransfer.cli import main as cli

    cli.main(["data", "check", "--data_dir", tfds_dir])
    lines = capsys.readouterr().out.splitlines()
    for name in RAW:
        line = next(x for x in lines if f" {name} " in x)
        assert line.startswith("ok") and tfds_dir in line, line
