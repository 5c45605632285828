"""Task metrics, all on a 0-100 scale (as T5 / seqio report them).

Classification metrics take integer label indices (`references`,
`predictions`, same length); a prediction of -1 (unparseable text) counts as
wrong. QA metrics take, per example, the list of gold answers and one
predicted string; summarization metrics one reference and one prediction.

  accuracy            share of exact label matches
  balanced_accuracy   mean over the classes present in the references of the
                      per-class recall (robust to skew: tweets, SMS, TREC)
  macro_f1            mean over classes (in references or predictions) of F1
  squad_em / squad_f1 SQuAD v1.1 evaluation: normalize (lowercase, drop
                      punctuation and the articles a/an/the, collapse
                      spaces), then exact match / token-bag F1, the maximum
                      over the gold answers, averaged over examples
  rouge_1/2/l         mean F-measure of rouge-score's rouge1 / rouge2 / rougeL,
                      Porter stemming on
  rouge_lsum          rouge-score's rougeLsum (summary-level LCS over sentences,
                      the paper's and T5's ROUGE-L), sentences split after
                      . ! ? followed by whitespace (and at newlines)
"""

from __future__ import annotations

import collections
import re
import string
from typing import Sequence

import numpy as np


def accuracy(references: Sequence[int], predictions: Sequence[int]) -> float:
    r, p = _as_int_arrays(references, predictions)
    return 100.0 * float(np.mean(r == p))


def balanced_accuracy(references: Sequence[int], predictions: Sequence[int]) -> float:
    r, p = _as_int_arrays(references, predictions)
    recalls = [np.mean(p[r == c] == c) for c in np.unique(r)]
    return 100.0 * float(np.mean(recalls))


def macro_f1(references: Sequence[int], predictions: Sequence[int]) -> float:
    r, p = _as_int_arrays(references, predictions)
    classes = np.union1d(np.unique(r), np.unique(p[p >= 0]))
    f1s = []
    for c in classes:
        tp = np.sum((p == c) & (r == c))
        denom = np.sum(p == c) + np.sum(r == c)
        f1s.append(2.0 * tp / denom if denom else 0.0)
    return 100.0 * float(np.mean(f1s))


def _as_int_arrays(references, predictions):
    r = np.asarray(references, dtype=np.int64).reshape(-1)
    p = np.asarray(predictions, dtype=np.int64).reshape(-1)
    if r.shape != p.shape or r.size == 0:
        raise ValueError(f"need as many predictions as references (> 0); got {p.size} "
                         f"predictions for {r.size} references.")
    return r, p


# ---- SQuAD ---------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalization: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def _max_over_gold(fn, references, predictions) -> float:
    if len(references) != len(predictions) or not references:
        raise ValueError(f"need one prediction per example (> 0); got {len(predictions)} "
                         f"predictions for {len(references)} examples.")
    scores = []
    for golds, pred in zip(references, predictions):
        golds = [golds] if isinstance(golds, str) else list(golds)
        scores.append(max(fn(pred, g) for g in golds) if golds else 0.0)
    return 100.0 * float(np.mean(scores))


def squad_em(references, predictions) -> float:
    return _max_over_gold(_exact, references, predictions)


def squad_f1(references, predictions) -> float:
    return _max_over_gold(_token_f1, references, predictions)


# ---- ROUGE ---------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentence_lines(text: str) -> str:
    """One sentence per line, the input rougeLsum expects."""
    return "\n".join(s for line in text.splitlines() for s in _SENTENCE_END.split(line.strip()) if s)


def _rouge(kind: str, references, predictions) -> float:
    from rouge_score import rouge_scorer

    if len(references) != len(predictions) or not references:
        raise ValueError(f"need one prediction per reference (> 0); got {len(predictions)} "
                         f"for {len(references)}.")
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    if kind == "rougeLsum":
        references = [sentence_lines(r) for r in references]
        predictions = [sentence_lines(p) for p in predictions]
    return 100.0 * float(np.mean([scorer.score(r, p)[kind].fmeasure
                                  for r, p in zip(references, predictions)]))


def rouge_1(references, predictions) -> float:
    return _rouge("rouge1", references, predictions)


def rouge_2(references, predictions) -> float:
    return _rouge("rouge2", references, predictions)


def rouge_l(references, predictions) -> float:
    return _rouge("rougeL", references, predictions)


def rouge_lsum(references, predictions) -> float:
    return _rouge("rougeLsum", references, predictions)


METRICS = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "macro_f1": macro_f1,
    "squad_em": squad_em,
    "squad_f1": squad_f1,
    "rouge_1": rouge_1,
    "rouge_2": rouge_2,
    "rouge_l": rouge_l,
    "rouge_lsum": rouge_lsum,
}


def compute_metrics(spec, references, predictions) -> dict[str, float]:
    """Every metric of `spec` (a TaskSpec) on references / predictions as above."""
    return {name: METRICS[name](references, predictions) for name in spec.metrics}


def label_index(spec, text: str) -> int:
    """Label index of a predicted label text (stripped), -1 if it is not a label word."""
    text = text.strip()
    return spec.label_words.index(text) if text in spec.label_words else -1


def seqio_metric_fns(spec):
    """seqio-style metric fns `(targets, predictions) -> dict` on decoded text."""

    def to_text(x):
        return x.decode("utf-8") if isinstance(x, bytes) else x

    def metric_fn(targets, predictions):
        if spec.is_classification:
            targets = [label_index(spec, to_text(t)) for t in targets]
            predictions = [label_index(spec, to_text(p)) for p in predictions]
        elif spec.answers_key:
            targets = [[to_text(a) for a in t] if not isinstance(t, (str, bytes))
                       else [to_text(t)] for t in targets]
            predictions = [to_text(p) for p in predictions]
        else:
            targets = [to_text(t) for t in targets]
            predictions = [to_text(p) for p in predictions]
        return compute_metrics(spec, targets, predictions)

    metric_fn.__name__ = f"{spec.name}_metrics"
    return [metric_fn]
