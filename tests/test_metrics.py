"""tasks.metrics against values worked out by hand."""

import pytest

import tasks
from tasks import metrics


def test_accuracy_and_balanced_accuracy():
    refs = [0, 0, 0, 1]
    preds = [0, 0, 1, 1]
    assert metrics.accuracy(refs, preds) == pytest.approx(75.0)
    # recall(0) = 2/3, recall(1) = 1/1 -> mean 5/6
    assert metrics.balanced_accuracy(refs, preds) == pytest.approx(100 * 5 / 6)
    # always predicting the majority class of a skewed set: accuracy 90, balanced 50
    refs = [0] * 9 + [1]
    assert metrics.accuracy(refs, [0] * 10) == pytest.approx(90.0)
    assert metrics.balanced_accuracy(refs, [0] * 10) == pytest.approx(50.0)
    # an unparseable prediction (-1) is wrong for every class
    assert metrics.balanced_accuracy([0, 1], [-1, 1]) == pytest.approx(50.0)


def test_macro_f1():
    refs = [0, 0, 0, 1, 2]
    preds = [0, 0, 1, 1, 1]
    # class 0: P 2/2 R 2/3 F1 0.8; class 1: P 1/3 R 1/1 F1 0.5; class 2: F1 0
    assert metrics.macro_f1(refs, preds) == pytest.approx(100 * (0.8 + 0.5 + 0.0) / 3)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(ValueError):
        metrics.squad_f1([["a"]], [])


def test_squad_normalization():
    assert metrics.normalize_answer("The  Cat, sat!") == "cat sat"
    assert metrics.normalize_answer("An apple a day") == "apple day"
    assert metrics.normalize_answer("theater") == "theater"  # articles only as whole words


def test_squad_em_and_f1_max_over_gold_answers():
    refs = [["a cat sat on the mat", "the cat"], ["Denver Broncos"], ["1,000"]]
    preds = ["the cat sat", "denver broncos.", "one thousand"]
    # ex 1 vs gold 1: pred {cat, sat}, gold {cat, sat, on, mat}: P 1, R 1/2 -> F1 2/3
    #      vs gold 2: pred {cat, sat}, gold {cat}: P 1/2, R 1 -> F1 2/3; EM 0
    # ex 2: exact after normalization -> 1, 1
    # ex 3: nothing in common -> 0, 0
    assert metrics.squad_f1(refs, preds) == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)
    assert metrics.squad_em(refs, preds) == pytest.approx(100 * (0 + 1 + 0) / 3)
    # max over answers: the second gold matches exactly
    assert metrics.squad_em([["x y", "the cat"]], ["cat"]) == pytest.approx(100.0)
    # repeated tokens count with multiplicity: pred {a:1, b:2}, gold {b:1}: P 1/3 R 1 -> 0.5
    assert metrics.squad_f1([["bb"]], ["aa bb bb"]) == pytest.approx(50.0)


def test_rouge_by_hand():
    # unigrams: pred {the, cat, sat}, ref {the, cat, was, here}: 2 common -> P 2/3 R 1/2
    assert metrics.rouge_1(["the cat was here"], ["the cat sat"]) == pytest.approx(
        100 * 2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    # bigrams: pred {the cat, cat sat}, ref {the cat, cat was, was here}: 1 common -> P 1/2 R 1/3
    assert metrics.rouge_2(["the cat was here"], ["the cat sat"]) == pytest.approx(
        100 * 2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    # same words, other order: ROUGE-1 is perfect, the LCS is 2 of 3 -> ROUGE-L F 2/3
    assert metrics.rouge_1(["the cat sat"], ["cat the sat"]) == pytest.approx(100.0)
    assert metrics.rouge_l(["the cat sat"], ["cat the sat"]) == pytest.approx(100 * 2 / 3)
    # averaged over examples; stemming makes "cats" match "cat"
    assert metrics.rouge_l(["cats run", "a b"], ["cat run", "c d"]) == pytest.approx(50.0)


def test_compute_metrics_uses_the_task_metric_list():
    got = tasks.compute_metrics(tasks.get_spec("tweets"), [0, 1, 1, 1], [0, 1, 1, 0])
    assert list(got) == ["balanced_accuracy", "accuracy", "macro_f1"]
    assert got["accuracy"] == pytest.approx(75.0)
    assert got["balanced_accuracy"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    got = tasks.compute_metrics(tasks.get_spec("squad"), [["Paris"]], ["paris"])
    assert got == {"squad_f1": 100.0, "squad_em": 100.0}
    assert set(tasks.compute_metrics(tasks.get_spec("samsum"), ["a b"], ["a b"])) == {
        "rouge_l", "rouge_lsum", "rouge_1", "rouge_2"}


def test_seqio_metric_fn_maps_label_text():
    (fn,) = metrics.seqio_metric_fns(tasks.get_spec("sst2"))
    got = fn([b"positive", "negative", "positive"], ["positive", "positive", "garbage"])
    assert got["accuracy"] == pytest.approx(100 / 3)


def test_rouge_lsum_is_summary_level_lcs_by_hand():
    """rougeLsum: per reference sentence, the union of its LCS tokens with every
    prediction sentence; here ref 'a b c. d e' vs pred 'a c. e d': sentence 1
    shares a,c (LCS 2), sentence 2 shares d or e with 'e d' (LCS 1) -> union 3
    of 5 reference and 5 predicted tokens; the sentence-blind rougeL LCS of
    'a b c d e' / 'a c e d' is 3 as well, but with 4 predicted tokens."""
    assert metrics.sentence_lines("a b c. d e") == "a b c.\nd e"
    got = metrics.rouge_lsum(["a b c. d e"], ["a c. e d"])
    p, r = 3 / 4, 3 / 5  # 4 predicted tokens (punctuation is dropped by the tokenizer)
    assert got == pytest.approx(100 * 2 * p * r / (p + r))
    # across sentences rougeLsum differs from rougeL: 'x y. z' vs 'z. x y'
    assert metrics.rouge_lsum(["x y. z"], ["z. x y"]) == pytest.approx(100.0)
    assert metrics.rouge_l(["x y. z"], ["z. x y"]) == pytest.approx(100 * 2 / 3)


def _official_squad_v11_f1(prediction, ground_truth):
    """The SQuAD v1.1 evaluation script's definition, written from its text:
    normalize_answer = white_space_fix(remove_articles(remove_punc(lower(s)))),
    f1 = 2PR/(P+R) over the Counter intersection of the normalized tokens,
    and metric_max_over_ground_truths takes the max over the gold answers."""
    import re as _re
    import string as _string
    from collections import Counter

    def normalize(s):
        s = s.lower()
        s = "".join(ch for ch in s if ch not in set(_string.punctuation))
        s = _re.sub(r"\b(a|an|the)\b", " ", s)
        return " ".join(s.split())

    p, g = normalize(prediction).split(), normalize(ground_truth).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0
    precision, recall = 1.0 * same / len(p), 1.0 * same / len(g)
    return (2 * precision * recall) / (precision + recall)


# (prediction, gold answers) pairs in the style of SQuAD v1.1 dev answers.
_SQUAD_CASES = [
    ("Denver Broncos", ["Denver Broncos", "Denver Broncos", "Denver Broncos"]),
    ("the Broncos", ["Denver Broncos"]),
    ("Santa Clara, California", ["Santa Clara, California", "Levi's Stadium",
                                 "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California."]),
    ("February 7, 2016", ["February 7, 2016", "February 7", "February 7, 2016"]),
    ("an American football game", ["American football", "the Super Bowl"]),
    ("gold", ["golden anniversary", "gold-themed", "gold"]),
    ("nothing at all", ["Carolina Panthers"]),
]


def test_squad_f1_matches_the_official_definition():
    refs = [golds for _, golds in _SQUAD_CASES]
    preds = [pred for pred, _ in _SQUAD_CASES]
    scores = [max(_official_squad_v11_f1(p, g) for g in golds) for p, golds in _SQUAD_CASES]
    want = 100 * sum(scores) / len(scores)
    assert metrics.squad_f1(refs, preds) == pytest.approx(want, abs=1e-12)
    assert 0 < want < 100  # the cases include partial matches and a miss
