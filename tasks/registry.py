"""seqio registration of the task specs, per vocabulary, on first use.

Naming scheme (the dataset name stays the key everywhere else):

  <dataset>__<vocab_key>__<eos|noeos>[__d<delimiter hex>][__mlm<bos>_<mask>_<end>]
  e.g. mr__byte__eos, sst2__spm3f2a9c01de__eos, mr__tok51c0e2aa7b__noeos__d20

`vocab_key` names the vocabulary: `byte` for seqio.ByteVocabulary,
`spm<hash>` for a SentencePiece model, `tok<hash>` for a vocabulary with a
`fingerprint` (ptransfer.core.vocab.TokenizersVocabulary). `eos` means EOS is
appended to both inputs and targets (T5); `noeos` appends none (decoder-only
and masked LMs). The `__mlm...` form renders the task's MLM template: start
token, the text before the mask slot, the mask token, the text after it, end
token, with the MLM label words as (single-token) targets. `__d20` means every
target text starts with the target delimiter " " (decoder-only backbones: the
target continues the input text, as lm-eval-harness's `target_delimiter`).
`__mlm<bos>_<mask>_<end>o` is the official RoBERTa code's input form (MLM
config `input_layout='official'`): no template text and no mask token, the
template's fields each ended by the end token, `<bos> a <end> [b <end>]`; the
backbone puts the mask in front (ptransfer.backbones.mlm docstring).

Mixtures by type: `<type>_mix__<vocab_key>__<eos|noeos>` over the paper's
tasks of that type, equal rates.

Every preprocessed example has `inputs` and `targets` (int32 token ids, with
`inputs_pretokenized` / `targets_pretokenized` text), `label` (int32 index into
the label words) for classification, and `answers` (all gold answers) for QA.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import string

import seqio
import tensorflow as tf

from ptransfer.core.errors import ConfigError, DataError
from ptransfer.core.vocab import check_single_token_label_words
from tasks import corpora, external, release_files, validation
from tasks.metrics import seqio_metric_fns
from tasks.sources import asset_cache_dir, resolve_data_dir
from tasks.specs import MASK_SLOT, TaskSpec, get_spec, tasks_of_type, template_fields

VERBALIZER_ERROR = "is outside the verbalizer"  # marker of label range errors


@dataclasses.dataclass(frozen=True)
class MlmIds:
    """The special ids a masked-LM input is built with."""

    bos_id: int
    mask_id: int
    eos_id: int
    layout: str = "ptransfer"  # or "official" (module docstring)

    @classmethod
    def of(cls, obj) -> "MlmIds":
        """From MlmIds, a mapping or an object (e.g. an MLM config) with
        bos_id, mask_id and eos_id (and optionally input_layout)."""
        if isinstance(obj, cls):
            return obj
        get = obj.get if isinstance(obj, dict) else functools.partial(getattr, obj)
        try:
            layout = (obj.get("input_layout", "ptransfer") if isinstance(obj, dict)
                      else getattr(obj, "input_layout", "ptransfer"))
            return cls(int(get("bos_id")), int(get("mask_id")), int(get("eos_id")), str(layout))
        except (AttributeError, KeyError, TypeError):
            raise ConfigError(f"mlm={obj!r} must give bos_id, mask_id and eos_id (e.g. the MLM "
                              "backbone's config).") from None


@dataclasses.dataclass(frozen=True)
class RegisteredTask:
    """What `get_task` registered under one seqio name."""

    spec: TaskSpec
    vocabulary: seqio.Vocabulary
    add_eos: bool
    mlm: MlmIds | None
    data_dir: str
    cache_dir: str
    target_delimiter: str = ""


_REGISTERED: dict[str, RegisteredTask] = {}


# ---- names -------------------------------------------------------------------------

def vocab_key(vocabulary: seqio.Vocabulary) -> str:
    """A short stable name of a vocabulary for task names (see module docstring)."""
    if isinstance(vocabulary, seqio.ByteVocabulary):
        return "byte" if not vocabulary.extra_ids else f"byte{vocabulary.extra_ids}x"
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        h = hashlib.sha256(vocabulary.sp_model or b"")
        h.update(str(vocabulary.extra_ids).encode())
        return "spm" + h.hexdigest()[:10]
    fingerprint = getattr(vocabulary, "fingerprint", None)
    if isinstance(fingerprint, str) and fingerprint:
        return "tok" + hashlib.sha256(fingerprint.encode()).hexdigest()[:10]
    # Last resort: what the vocabulary does to a probe text.
    probe = "The quick brown fox, 0123 <mask> [MASK] éü 漢字!"
    h = hashlib.sha256(repr((type(vocabulary).__name__, vocabulary.vocab_size,
                             vocabulary.eos_id, list(vocabulary.encode(probe)))).encode())
    return type(vocabulary).__name__.lower()[:8] + h.hexdigest()[:10]


def seqio_task_name(name: str, vocabulary, *, add_eos: bool, mlm=None,
                    target_delimiter: str = "") -> str:
    spec = get_spec(name)
    out = f"{spec.name}__{vocab_key(vocabulary)}__{'eos' if add_eos else 'noeos'}"
    if target_delimiter:
        out += "__d" + target_delimiter.encode("utf-8").hex()
    if mlm is not None:
        ids = MlmIds.of(mlm)
        out += f"__mlm{ids.bos_id}_{ids.mask_id}_{ids.eos_id}"
        if ids.layout == "official":
            out += "o"
    return out


def find_registered(task_or_name) -> RegisteredTask | None:
    """The RegisteredTask of a seqio task made by `get_task` (or its name); None
    for any other seqio task."""
    return _REGISTERED.get(getattr(task_or_name, "name", task_or_name))


def registered(task_or_name) -> RegisteredTask:
    """The RegisteredTask of a seqio task made by `get_task` (or its name)."""
    name = getattr(task_or_name, "name", task_or_name)
    if name not in _REGISTERED:
        raise ConfigError(f"seqio task {name!r} was not made by tasks.get_task; use "
                          "tasks.get_task(dataset, vocabulary, add_eos=...) to build it.")
    return _REGISTERED[name]


# ---- data sources ------------------------------------------------------------------

class CheckedTfdsDataSource(seqio.TfdsDataSource):
    """seqio.TfdsDataSource that first checks the dataset is prepared (a
    DataError saying how to prepare it otherwise) and that the TFDS label
    names are the ones the verbalizer was written for."""

    def __init__(self, spec: TaskSpec, data_dir: str):
        self._spec = spec
        self._data_dir = data_dir
        self._checked = False
        src = spec.source
        super().__init__(tfds_name=src.versioned_name, tfds_data_dir=data_dir,
                         splits=dict(src.splits))

    def _check(self):
        if self._checked:
            return
        src = self._spec.source
        validation.check_data(self._spec, self._data_dir)  # prepared, or how to prepare it
        if src.label_names:
            names = tuple(self.tfds_dataset.info.features["label"].names)
            if names != src.label_names:
                raise DataError(
                    f"task {self._spec.name!r}: TFDS {src.tfds_name} labels are {list(names)}, "
                    f"but its label words {list(self._spec.label_words)} were written for "
                    f"{list(src.label_names)}; this TFDS version is not supported.")
        self._checked = True

    def get_dataset(self, split=None, shuffle=True, seed=None, shard_info=None, **kwargs):
        self._check()
        return super().get_dataset(split, shuffle=shuffle, seed=seed, shard_info=shard_info,
                                   **kwargs)

    def num_input_examples(self, split):
        self._check()
        return super().num_input_examples(split)

    def list_shards(self, split):
        self._check()
        return super().list_shards(split)


def _columns_dataset(cols: dict) -> tf.data.Dataset:
    tensors = {k: tf.constant(v, tf.int64 if k == "label" else tf.string) for k, v in cols.items()}
    return tf.data.Dataset.from_tensor_slices(tensors)


def _release_files_fn(split, shuffle_files, seed=None, *, spec, data_dir):
    del shuffle_files, seed  # one in-memory shard, ordered as the reader returns it
    return _columns_dataset(release_files.read_split(spec, data_dir, split))


def _corpus_fn(split, shuffle_files, seed=None, *, spec, cache):
    del shuffle_files, seed
    return _columns_dataset(corpora.read_split(spec, cache, split))


def make_source(spec: TaskSpec, data_dir: str, cache: str) -> seqio.DataSource:
    kind = spec.source.kind
    if kind == "tfds":
        return CheckedTfdsDataSource(spec, data_dir)
    if kind == "seqio":
        fn = functools.partial(external.text_examples, spec=spec)
    elif kind == "files":
        fn = functools.partial(_release_files_fn, spec=spec, data_dir=data_dir)
    else:
        fn = functools.partial(_corpus_fn, spec=spec, cache=cache)
    return seqio.FunctionDataSource(fn, splits=spec.splits, caching_permitted=False)


# ---- preprocessors -----------------------------------------------------------------

def _get(ex, key: str):
    for part in key.split("/"):
        ex = ex[part]
    return ex


def _render(template: str, ex) -> tf.Tensor:
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(tf.constant(literal))
        if field:
            parts.append(tf.strings.strip(_get(ex, field)))
    return tf.strings.join(parts) if parts else tf.constant("")


def checked_label(spec: TaskSpec, label: tf.Tensor, words) -> tf.Tensor:
    """label as int32, with an assertion that it indexes `words`."""
    label = tf.cast(label, tf.int64)
    ok = tf.logical_and(label >= 0, label < len(words))
    check = tf.debugging.Assert(ok, [f"task {spec.name!r}: a label {VERBALIZER_ERROR} "
                                     f"{dict(enumerate(words))}; got label", label])
    with tf.control_dependencies([check]):
        return tf.cast(tf.identity(label), tf.int32)


def format_examples(dataset: tf.data.Dataset, *, spec: TaskSpec, mlm: bool,
                    target_delimiter: str = "", official: bool = False) -> tf.data.Dataset:
    """Raw source examples -> {inputs, targets (text), label | answers}.

    MLM form: `inputs` is split into `inputs_prefix` / `inputs_suffix` around
    the mask slot (tokenized by `tokenize_mlm`); with `official`, into
    `inputs_field_<i>`, the MLM template's fields without its text. `target_delimiter`
    goes before every target text (not before the `answers` references).
    """
    if spec.drop_labels:
        drops = tf.constant(spec.drop_labels, tf.int64)
        dataset = dataset.filter(
            lambda ex: tf.reduce_all(tf.not_equal(tf.cast(ex["label"], tf.int64), drops)))
    if spec.answers_key:  # examples without any gold answer cannot be scored
        dataset = dataset.filter(lambda ex: tf.size(_get(ex, spec.answers_key)) > 0)
    words = spec.mlm_label_words if mlm else spec.label_words
    if target_delimiter and not mlm:
        words = tuple(target_delimiter + w for w in words)

    def delimited(text):
        return tf.strings.join([target_delimiter, text]) if target_delimiter else text

    @tf.autograph.experimental.do_not_convert  # no tensor-dependent Python flow: skip autograph
    def fn(ex):
        out = {}
        if mlm and official:
            for i, field in enumerate(template_fields(spec.mlm_template)):
                out[f"inputs_field_{i}"] = tf.strings.strip(_get(ex, field))
        elif mlm:
            before, after = spec.mlm_template.split(MASK_SLOT, 1)
            out["inputs_prefix"] = tf.strings.regex_replace(_render(before, ex), r"\s+$", "")
            out["inputs_suffix"] = _render(after, ex)
        else:
            out["inputs"] = _render(spec.template, ex)
        if spec.is_classification:
            label = checked_label(spec, ex["label"], words)
            out["label"] = label
            out["targets"] = tf.gather(tf.constant(words), label)
        elif spec.answers_key:
            answers = tf.strings.strip(_get(ex, spec.answers_key))
            out["answers"] = answers
            out["targets"] = delimited(answers[0])
        else:
            out["targets"] = delimited(tf.strings.strip(_get(ex, spec.target_key)))
        return out

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def tokenize_mlm(dataset: tf.data.Dataset, output_features, *, ids: MlmIds) -> tf.data.Dataset:
    """inputs = [bos] prefix [mask] suffix [end] ('official' layout: [bos] field
    [end] per field); targets = the label word's tokens."""
    vocab = output_features["inputs"].vocabulary
    target_vocab = output_features["targets"].vocabulary

    @tf.autograph.experimental.do_not_convert
    def official(ex):  # <bos> a <end> [b <end>] (the official code's formatters)
        ex = dict(ex)
        fields = [ex.pop(k) for k in sorted(k for k in list(ex) if k.startswith("inputs_field_"))]
        parts = [[ids.bos_id]]
        for text in fields:
            parts += [tf.cast(vocab.encode_tf(text), tf.int32), [ids.eos_id]]
        ex["inputs_pretokenized"] = tf.strings.join(fields, separator=" | ")
        ex["inputs"] = tf.concat(parts, axis=0)
        ex["targets_pretokenized"] = ex["targets"]
        ex["targets"] = tf.cast(target_vocab.encode_tf(ex["targets"]), tf.int32)
        return ex

    @tf.autograph.experimental.do_not_convert
    def fn(ex):
        ex = dict(ex)
        prefix, suffix = ex.pop("inputs_prefix"), ex.pop("inputs_suffix")
        ex["inputs_pretokenized"] = tf.strings.join([prefix, f" {MASK_SLOT}", suffix])
        ex["inputs"] = tf.concat([[ids.bos_id], tf.cast(vocab.encode_tf(prefix), tf.int32),
                                  [ids.mask_id], tf.cast(vocab.encode_tf(suffix), tf.int32),
                                  [ids.eos_id]], axis=0)
        ex["targets_pretokenized"] = ex["targets"]
        ex["targets"] = tf.cast(target_vocab.encode_tf(ex["targets"]), tf.int32)
        return ex

    return dataset.map(official if ids.layout == "official" else fn,
                       num_parallel_calls=tf.data.AUTOTUNE)


# ---- registration ------------------------------------------------------------------

def check_mlm_form(spec: TaskSpec, vocabulary: seqio.Vocabulary) -> None:
    """ConfigError unless the MLM template has exactly one mask slot and every MLM
    label word is one token of `vocabulary` (the message names the word and the task)."""
    slots = spec.mlm_template.count(MASK_SLOT)
    if slots != 1:
        raise ConfigError(
            f"task {spec.name!r}: its masked-LM template {spec.mlm_template!r} has {slots} mask "
            f"slots; it needs exactly one {MASK_SLOT} where the label word goes (e.g. "
            f"'{{text}} It was {MASK_SLOT}.').")
    if not spec.mlm_label_words:
        raise ConfigError(f"task {spec.name!r} has a masked-LM template but no mlm_label_words; "
                          "declare one single-token label word per label.")
    check_single_token_label_words(vocabulary, spec.mlm_label_words, spec.name)


def check_label_words_fit(spec: TaskSpec, vocabulary: seqio.Vocabulary,
                          target_delimiter: str) -> None:
    """ConfigError unless every `target_delimiter + label word` is one token of
    `vocabulary` (the message names the word and its pieces).

    Applies to delimited (decoder-only) targets of tasks with
    `single_token_labels`: there rank classification sums the label's token
    log-likelihoods, so a label of two tokens is scored lower than one of one
    token, and its second token is a nearly free prediction that dilutes the
    loss. T5 targets (separate sequences ending in EOS, the paper's setting)
    are not checked, nor byte-level vocabularies (test models), where no word
    is one token."""
    if not (target_delimiter and spec.is_classification and spec.single_token_labels):
        return
    if isinstance(vocabulary, seqio.ByteVocabulary):
        return
    check_single_token_label_words(
        vocabulary, [target_delimiter + w for w in spec.label_words], spec.name,
        reason="this task's label words are declared single tokens after the target "
               f"delimiter {target_delimiter!r} (decoder-only rank classification sums "
               "per-token log-likelihoods, which favours shorter labels). Choose label words "
               "that are one token of every shipped tokenizer, or declare the spec "
               "single_token_labels=False.")


def get_task(name, vocabulary: seqio.Vocabulary, *, add_eos: bool, data_dir: str | None = None,
             cache_dir: str | None = None, mlm=None, target_delimiter: str = "") -> seqio.Task:
    """The seqio Task of dataset `name` for `vocabulary`, registered on first use.

    Args:
      name: dataset key (see `tasks.task_names()`) or a TaskSpec.
      vocabulary: the backbone's seqio vocabulary.
      add_eos: append EOS to inputs and targets (T5: True; decoder-only: False).
      data_dir: root of TFDS-prepared data and release files
        (`tasks.sources.resolve_data_dir`).
      cache_dir: the offline asset cache (default `ptransfer.core.assets.cache_dir()`).
      mlm: MlmIds (or an object with bos_id / mask_id / eos_id) to build the
        masked-LM form; inputs then carry those special ids themselves and
        add_eos applies to nothing.
      target_delimiter: text put before every target (" " for decoder-only
        backbones, `Backbone.target_delimiter`); not used with `mlm`. The label
        words then must be single tokens (`check_label_words_fit`).
    Reading no data here: a missing file is reported when the dataset is read.
    """
    spec = get_spec(name)
    ids = MlmIds.of(mlm) if mlm is not None else None
    if ids is not None and not spec.mlm_template:
        raise ConfigError(f"task {spec.name!r} ({spec.type}) has no masked-LM template: a "
                          "masked LM cannot generate, use a T5 or decoder-only backbone.")
    if ids is not None:
        check_mlm_form(spec, vocabulary)
        target_delimiter = ""
    check_label_words_fit(spec, vocabulary, target_delimiter)
    task_name = seqio_task_name(spec, vocabulary, add_eos=add_eos, mlm=ids,
                                target_delimiter=target_delimiter)
    want = RegisteredTask(spec, vocabulary, add_eos, ids, resolve_data_dir(data_dir),
                          asset_cache_dir(cache_dir), target_delimiter)
    have = _REGISTERED.get(task_name)
    if have is not None and have == want and task_name in seqio.TaskRegistry.names():
        return seqio.TaskRegistry.get(task_name)
    seqio.TaskRegistry.remove(task_name)

    if ids is None:
        output_features = {"inputs": seqio.Feature(vocabulary, add_eos=add_eos),
                           "targets": seqio.Feature(vocabulary, add_eos=add_eos)}
        tokenize = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
    else:
        output_features = {"inputs": seqio.Feature(vocabulary, add_eos=False),
                           "targets": seqio.Feature(vocabulary, add_eos=False)}
        tokenize = [functools.partial(tokenize_mlm, ids=ids)]
    task = seqio.Task(
        task_name,
        source=make_source(spec, want.data_dir, want.cache_dir),
        output_features=output_features,
        preprocessors=[functools.partial(format_examples, spec=spec, mlm=ids is not None,
                                         target_delimiter=target_delimiter,
                                         official=ids is not None and ids.layout == "official"),
                       *tokenize],
        postprocess_fn=functools.partial(_postprocess, spec=spec),
        metric_fns=seqio_metric_fns(spec),
    )
    seqio.TaskRegistry.add_provider(task_name, task)
    _REGISTERED[task_name] = want
    return task


def _postprocess(output, example=None, is_target=False, *, spec: TaskSpec):
    """seqio postprocess: QA references are all gold answers, as text."""
    if is_target and spec.answers_key and example is not None:
        return [a.decode("utf-8") if isinstance(a, bytes) else str(a)
                for a in example["answers"]]
    return output


def get_mixture(task_type: str, vocabulary: seqio.Vocabulary, *, add_eos: bool,
                data_dir: str | None = None, cache_dir: str | None = None,
                paper_only: bool = True) -> seqio.Mixture:
    """Equal-rate seqio Mixture of the tasks of one type (paper tasks by default)."""
    names = tasks_of_type(task_type, paper_only=paper_only)
    if not names:
        raise ConfigError(f"no {'paper ' if paper_only else ''}tasks of type {task_type!r}; "
                          "pass paper_only=False to include the offline corpora.")
    tasks = [get_task(n, vocabulary, add_eos=add_eos, data_dir=data_dir, cache_dir=cache_dir)
             for n in names]
    mix_name = (f"{task_type}_mix{'' if paper_only else '_all'}__{vocab_key(vocabulary)}__"
                f"{'eos' if add_eos else 'noeos'}")
    seqio.MixtureRegistry.remove(mix_name)
    return seqio.MixtureRegistry.add(mix_name, [(t.name, 1.0) for t in tasks])
