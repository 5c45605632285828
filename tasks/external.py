"""Any registered seqio Task or Mixture as a ptransfer task (`TASK` = T5X's MIXTURE_OR_TASK_NAME).

A user registers a seqio Task (or Mixture) in their own module and names the
module with `--gin.import=my_tasks` or an `import my_tasks` line in a gin
file; then `TASK=my_task` trains, evaluates and transfers like a built-in
task. The user's task is read as text (`inputs_pretokenized` /
`targets_pretokenized` when it tokenizes, its string `inputs` / `targets`
otherwise, or its token ids decoded with its own vocabulary) and
re-tokenized for each backbone by `tasks.registry.get_task`, so one user task
serves every backbone.

Its verbalizer and metrics come from, in this order:

1. gin: `tasks.seqio_task_metadata.overrides = {'my_task': {'label_words':
   ['negative', 'positive'], 'metrics': ['accuracy']}}`;
2. the task's own metadata: the `label_classes` of its postprocess_fn (as
   T5's `string_label_to_class_id` is bound, `functools.partial(...,
   label_classes=[...])`), and its `metric_fns` by function name (`accuracy`,
   `mean_multiclass_f1`, `squad`, `rouge`, or any name in
   `tasks.metrics.METRICS`).

A task with label words is classification (a target text is the label word;
any other target is an error when read); one without is generative and needs
metrics (squad -> QA, with all gold answers from an `answers` feature when the
task has one; rouge -> summarization).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import gin

from ptransfer.core.errors import ConfigError
from tasks.metrics import METRICS

SEQIO_TYPE = "seqio"
_CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
# seqio / T5 metric function names -> ptransfer metric names
_METRIC_NAMES = {
    "accuracy": ("accuracy",),
    "sequence_accuracy": ("accuracy",),
    "mean_multiclass_f1": ("macro_f1",),
    "f1_score_with_invalid": ("macro_f1",),
    "squad": ("squad_f1", "squad_em"),
    "rouge": ("rouge_l", "rouge_lsum", "rouge_1", "rouge_2"),
}


@dataclasses.dataclass(frozen=True)
class SeqioSource:
    """A seqio Task or Mixture registered by the user (read through seqio)."""

    seqio_name: str
    splits: tuple[str, ...]
    answers: bool = False  # the task's examples carry an `answers` feature

    kind = "seqio"

    @property
    def describe(self) -> str:
        return f"seqio:{self.seqio_name}"


@gin.configurable(module="tasks")
def seqio_task_metadata(name: str, overrides: Mapping[str, Mapping] | None = None) -> dict:
    """The gin-given metadata of seqio task `name` ({} when none)."""
    if not overrides:
        return {}
    meta = dict(overrides.get(name, {}))
    unknown = sorted(set(meta) - {"label_words", "metrics"})
    if unknown:
        raise ConfigError(f"tasks.seqio_task_metadata.overrides[{name!r}] has unknown keys "
                          f"{unknown}; use 'label_words' and 'metrics'.")
    return meta


def find_provider(name: str):
    """The registered seqio Task or Mixture `name`, or None."""
    import seqio

    if name in seqio.TaskRegistry.names():
        return seqio.TaskRegistry.get(name)
    if name in seqio.MixtureRegistry.names():
        return seqio.MixtureRegistry.get(name)
    return None


def _leaf_tasks(provider) -> list:
    return list(provider.tasks) if hasattr(provider, "tasks") else [provider]


def _label_classes(provider) -> tuple[str, ...]:
    found = set()
    for task in _leaf_tasks(provider):
        fn = task.postprocessor
        classes = fn.keywords.get("label_classes") if isinstance(fn, functools.partial) else None
        found.add(tuple(str(c) for c in classes) if classes else ())
    if len(found) > 1:
        raise ConfigError(f"seqio mixture {provider.name!r}: its tasks declare different "
                          f"label_classes {sorted(found)}; give the label words in gin "
                          "(tasks.seqio_task_metadata.overrides).")
    return found.pop() if found else ()


def _metric_names(provider) -> tuple[str, ...]:
    names: list[str] = []
    for task in _leaf_tasks(provider):
        for fn in getattr(task, "metric_fns", ()) or ():
            fn_name = getattr(getattr(fn, "func", fn), "__name__", "")
            mapped = _METRIC_NAMES.get(fn_name) or ((fn_name,) if fn_name in METRICS else ())
            names += [m for m in mapped if m not in names]
    return tuple(names)


def _check_metrics(name: str, metrics, classification: bool) -> tuple[str, ...]:
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"seqio task {name!r}: unknown metric(s) {unknown}; use names of "
                          f"{sorted(METRICS)}.")
    if not metrics:
        if classification:
            return _CLASSIFICATION_METRICS
        raise ConfigError(
            f"seqio task {name!r} has no label words (so it is generative) and no metric ptransfer "
            f"knows; give them in gin: tasks.seqio_task_metadata.overrides = {{{name!r}: "
            "{'metrics': ['squad_f1']}}, or declare label_classes on its postprocess_fn for a "
            "classification task.")
    label_metrics = set(_CLASSIFICATION_METRICS)
    if classification and not set(metrics) <= label_metrics:
        raise ConfigError(f"seqio task {name!r} has label words, so its metrics must be among "
                          f"{sorted(label_metrics)}; got {list(metrics)}.")
    if not classification and set(metrics) & label_metrics:
        raise ConfigError(f"seqio task {name!r}: metrics {list(metrics)} need label words; give "
                          "them as label_words in tasks.seqio_task_metadata.overrides.")
    return metrics


def spec_for(name: str):
    """A TaskSpec for the registered seqio Task or Mixture `name`, or None if there is none."""
    from tasks.specs import TaskSpec  # specs imports this module lazily

    provider = find_provider(name)
    if provider is None:
        return None
    meta = seqio_task_metadata(name)
    words = tuple(meta.get("label_words") or _label_classes(provider))
    if len(set(words)) != len(words):
        raise ConfigError(f"seqio task {name!r}: label words {list(words)} repeat a word.")
    metrics = _check_metrics(name, meta.get("metrics") or _metric_names(provider), bool(words))
    qa = not words and metrics[0].startswith("squad")
    feats = set().union(*(t.output_features for t in _leaf_tasks(provider)))
    if "inputs" not in feats or "targets" not in feats:
        raise ConfigError(f"seqio task {name!r} has output features {sorted(feats)}; ptransfer "
                          "needs 'inputs' and 'targets' (T5X's encoder-decoder layout).")
    source = SeqioSource(name, tuple(provider.splits), answers=qa)
    return TaskSpec(name=name, type=SEQIO_TYPE, source=source, template="{inputs}",
                    label_words=words, single_token_labels=False, metrics=metrics,
                    answers_key="answers" if qa else None, target_key=None if qa else "targets")


# ---- reading the user's task as text (TensorFlow; called by tasks.registry) -------------

def _as_text(ex, key: str, provider):
    import tensorflow as tf

    if f"{key}_pretokenized" in ex:
        return ex[f"{key}_pretokenized"]
    value = ex[key]
    if value.dtype == tf.string:
        return value
    vocab = _leaf_tasks(provider)[0].output_features[key].vocabulary
    return vocab.decode_tf(tf.cast(value, tf.int32))


def text_examples(split, shuffle_files, seed=None, *, spec):
    """The user's examples of `split` as {inputs, targets (text), label | answers}:
    the raw examples `tasks.registry.format_examples` turns into ptransfer's."""
    import tensorflow as tf

    del shuffle_files
    provider = find_provider(spec.source.seqio_name)
    if provider is None:
        raise ConfigError(f"seqio task {spec.name!r} is no longer registered.")
    kwargs = {"copy_pretokenized": True} if hasattr(provider, "tasks") else {}
    ds = provider.get_dataset(sequence_length=None, split=split, shuffle=False, seed=seed,
                              num_epochs=1, use_cached=False, trim_output_features=False,
                              **kwargs)
    words = tf.constant(spec.label_words or ("",))

    @tf.autograph.experimental.do_not_convert
    def fn(ex):
        inputs, targets = _as_text(ex, "inputs", provider), _as_text(ex, "targets", provider)
        out = {"inputs": inputs, "targets": targets}
        if spec.label_words:
            hit = tf.where(tf.equal(words, tf.strings.strip(targets)))
            # a target that is no label word becomes an out-of-range label: checked later
            out["label"] = tf.cond(tf.size(hit) > 0, lambda: hit[0, 0],
                                   lambda: tf.constant(len(spec.label_words), tf.int64))
        elif spec.answers_key:
            out["answers"] = ex["answers"] if "answers" in ex else tf.reshape(targets, [1])
        return out

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
