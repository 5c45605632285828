"""Readers for the public release files of the paper's datasets TFDS lacks.

Each reader returns one split as columns: `{field: [str, ...], "label":
[int, ...]}`, where the fields are the ones the task's template names and the
label indexes the task's `label_words`. A label the verbalizer does not know
is a DataError naming the file and the value, never a silent drop.

Layouts (under the data root, mirroring each release):
  semeval2014_task4/  Laptop_Train_v2.xml  Laptops_Test_Gold.xml
                      Restaurants_Train_v2.xml  Restaurants_Test_Gold.xml
  tweeteval/sentiment/  {train,val,test}_text.txt  {train,val,test}_labels.txt
  ethics/deontology/  deontology_{train,test,test_hard}.csv  (label,scenario,excuse)
  ethics/justice/     justice_{train,test,test_hard}.csv     (label,scenario)
"""

from __future__ import annotations

import csv
import os
import random
import xml.etree.ElementTree as ET

from ptransfer.core.errors import DataError
from tasks.sources import ReleaseFiles
from tasks.splitting import SPLIT_SEED, normalize_text

# SemEval-2014 Task 4 ships train and test only; this share of the training
# *sentences* (all aspect terms of a sentence together) is held out, seeded.
SEMEVAL_VALIDATION_FRACTION = 0.1


def _label_index(value: str, label_words, where: str) -> int:
    if value not in label_words:
        raise DataError(f"{where}: label {value!r} is outside the verbalizer "
                        f"{list(label_words)}; fix the file or the task's label words.")
    return label_words.index(value)


def read_semeval2014(paths, split: str, label_words) -> dict:
    """Aspect-term polarity: one example per (sentence, aspect term).

    Fields: sentence, aspect, label. `train` and `validation` both read the
    training file and split its sentences (SEMEVAL_VALIDATION_FRACTION, seeded).
    """
    (path,) = paths
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path} is not valid SemEval-2014 XML ({e}); use the release's "
                        "*_Train_v2.xml / *_Test_Gold.xml files unchanged.") from None
    sentences = []
    for sent in root.iter("sentence"):
        text = (sent.findtext("text") or "").strip()
        terms = []
        for term in sent.iter("aspectTerm"):
            where = f"{path} sentence id={sent.get('id')} term {term.get('term')!r}"
            polarity = term.get("polarity")
            if polarity is None:
                raise DataError(f"{where}: no polarity attribute; the test-phase file without "
                                "gold labels cannot be used, take the *_Test_Gold.xml release.")
            terms.append((term.get("term", ""), _label_index(polarity, label_words, where)))
        if text and terms:
            sentences.append((text, terms))
    if split in ("train", "validation"):
        keys = sorted({normalize_text(t) for t, _ in sentences})
        random.Random(SPLIT_SEED).shuffle(keys)
        held = set(keys[:round(len(keys) * SEMEVAL_VALIDATION_FRACTION)])
        want_held = split == "validation"
        sentences = [s for s in sentences if (normalize_text(s[0]) in held) == want_held]
    cols = {"sentence": [], "aspect": [], "label": []}
    for text, terms in sentences:
        for term, label in terms:
            cols["sentence"].append(text)
            cols["aspect"].append(term)
            cols["label"].append(label)
    return cols


def read_tweeteval(paths, split: str, label_words) -> dict:
    """TweetEval: one tweet per line in *_text.txt, its 0/1/2 label per line in *_labels.txt."""
    text_path, label_path = paths
    with open(text_path, encoding="utf-8") as f:
        texts = [line.rstrip("\r\n").strip() for line in f]
    with open(label_path, encoding="utf-8") as f:
        labels = [line.strip() for line in f]
    while texts and not texts[-1]:
        texts.pop()
    while labels and not labels[-1]:
        labels.pop()
    if len(texts) != len(labels):
        raise DataError(f"{text_path} has {len(texts)} lines but {label_path} has {len(labels)}; "
                        "they must be the release's matching pair.")
    cols = {"text": texts, "label": []}
    for i, value in enumerate(labels):
        where = f"{label_path} line {i + 1}"
        if not value.isdigit() or int(value) >= len(label_words):
            raise DataError(f"{where}: label {value!r} is outside the verbalizer "
                            f"{dict(enumerate(label_words))}.")
        cols["label"].append(int(value))
    return cols


def read_ethics(paths, split: str, label_words, fields) -> dict:
    """ETHICS CSV with a header: label (0 unacceptable, 1 acceptable) then the fields."""
    (path,) = paths
    cols = {f: [] for f in fields}
    cols["label"] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        need = ["label", *fields]
        if not reader.fieldnames or any(k not in reader.fieldnames for k in need):
            raise DataError(f"{path}: header {reader.fieldnames} lacks {need}; use the CSV files "
                            "of the ETHICS release unchanged.")
        for i, row in enumerate(reader):
            value = (row["label"] or "").strip()
            if value not in ("0", "1") or int(value) >= len(label_words):
                raise DataError(f"{path} row {i + 2}: label {value!r} is outside the verbalizer "
                                f"{dict(enumerate(label_words))}.")
            cols["label"].append(int(value))
            for k in fields:
                cols[k].append((row[k] or "").strip())
    return cols


READERS = {
    "semeval2014": lambda paths, split, spec: read_semeval2014(paths, split, spec.label_words),
    "tweeteval": lambda paths, split, spec: read_tweeteval(paths, split, spec.label_words),
    "ethics": lambda paths, split, spec: read_ethics(paths, split, spec.label_words,
                                                     spec.template_fields),
}


def read_split(spec, data_dir: str, split: str) -> dict:
    """Columns of `split` of a ReleaseFiles task; DataError if files are missing or empty."""
    source: ReleaseFiles = spec.source
    paths = source.require(data_dir, split)
    cols = READERS[source.reader](paths, split, spec)
    if not cols["label"]:
        raise DataError(f"split {split!r} of task {spec.name!r} is empty (read "
                        f"{', '.join(os.path.basename(p) for p in paths)} in "
                        f"{os.path.join(data_dir, source.subdir)}).")
    return cols
