"""De-duplication and deterministic seeded splits for corpora without splits.

Rules (shared by every offline corpus, documented in tasks/README.md):
  * texts are compared by `normalize_text` (case folded, everything but
    letters and digits removed, spaces included), so copies that differ in
    punctuation, quoting or a lost space ("favor ofoutrageous") are duplicates;
  * duplicates with one label keep their first occurrence; texts that occur
    with different labels are dropped entirely (their label is unknowable);
  * splits are stratified per label: each label's examples, sorted by
    normalized text (so file order does not matter), are shuffled with
    `random.Random(SPLIT_SEED)` and cut into validation, test and train.
Because duplicates are removed first, no text appears in two splits.
"""

from __future__ import annotations

import random
import re
import unicodedata

SPLIT_SEED = 0
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """The comparison key of a text: NFKC, lowercase, letters and digits only."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _NON_WORD.sub("", text)


def deduplicate(rows):
    """[(text, label)] -> [(text, label)] without duplicates (see module docstring).

    Also drops texts that normalize to nothing.
    """
    first: dict[str, tuple[str, int]] = {}
    labels: dict[str, set] = {}
    for text, label in rows:
        key = normalize_text(text)
        if not key:
            continue
        first.setdefault(key, (text, label))
        labels.setdefault(key, set()).add(label)
    return [first[k] for k in first if len(labels[k]) == 1]


def stratified_split(rows, fractions: dict[str, float], seed: int = SPLIT_SEED) -> dict:
    """Splits deduplicated [(text, label)] per label.

    Args:
      fractions: split -> share for every split except the last key, which
        takes the rest, e.g. {"validation": 0.1, "test": 0.1, "train": None}.
    Returns:
      split -> [(text, label)], each split's rows in a seeded shuffled order.
    """
    rng = random.Random(seed)
    names = list(fractions)
    out = {name: [] for name in names}
    for label in sorted({lab for _, lab in rows}):
        members = sorted((r for r in rows if r[1] == label), key=lambda r: normalize_text(r[0]))
        rng.shuffle(members)
        start = 0
        for name in names[:-1]:
            n = round(len(members) * fractions[name])
            out[name] += members[start:start + n]
            start += n
        out[names[-1]] += members[start:]
    for name in names:
        rng.shuffle(out[name])
    return out
