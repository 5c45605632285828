"""Tokenized seqio examples -> the shared batch layout, and resumable batch streams.

Layout (the contract of `ptransfer/backbones/base.py`, one for every family):

  inputs        int32 [B, Li]  LEFT-padded with 0, real tokens at the right end
  inputs_mask   int32 [B, Li]  1 on real tokens
  targets       int32 [B, Lt]  RIGHT-padded with 0
  targets_mask  int32 [B, Lt]  1 on real tokens
  label         int32 [B]      classification tasks: index into the label words
  valid         int32 [B]      1 for real examples, 0 for rows that only fill
                               the last batch of a finite (eval) stream

EOS: the seqio tasks of `tasks.get_task` append EOS to inputs and targets iff
`add_eos` (their Features' `add_eos`); truncation never removes it.

Truncation to the fixed lengths:
  * targets: cut at the end (the EOS, if any, is kept as last token);
  * inputs, `truncate_inputs="right"` (default, seqio's own rule): cut at the
    end, keeping a final EOS; `"left"`: cut at the start, so the end of the
    input (a template's cue such as "sentiment:", and EOS) always survives --
    the better choice for decoder-only models;
  * masked-LM inputs (`tasks.get_task(..., mlm=...)`): always cut the text just
    before the mask token, so the start token, the mask and what follows it
    survive; in the official RoBERTa code's input form (no mask token in the
    inputs, MLM `input_layout='official'`) cut at the end keeping the final
    end token, as its formatters do.

Deterministic, resumable streams (`iterate_batches`): the split is read in its
fixed source order, sharded by example (`shard_index` of `num_shards`),
shuffled with a buffer seeded by `seed` (tf.data; re-shuffled each epoch, the
same sequence of epochs on every run with the same TensorFlow version unless
`tf.random.set_seed` was called), repeated, and cut into batches of
`batch_size` (per shard). Batch k of the stream is examples
[k * batch_size, (k + 1) * batch_size) of that sequence, so `start_step=k`
skips exactly k batches and a resumed run sees the very batches an
uninterrupted one would (the skipped examples are still tokenized: resume
costs about one pass of tokenization over start_step * batch_size examples).

Class-balanced streams (`balance_classes=True`, classification training): the
shard's examples of each label form their own stream, shuffled (seeded per
label) and repeated on its own, and the streams are taken in turn (label 0,
1, ..., C-1, 0, ...): an equal-rate mixture over per-class tasks, as a seqio
Mixture with equal rates would sample, but deterministic, so every C
consecutive examples hold one of each class (minority classes are repeated
more often) and resumption by skipping stays exact.
"""

from __future__ import annotations

import re
from typing import Iterator, Mapping

import numpy as np

import tasks
from ptransfer.core.errors import ConfigError, DataError
from ptransfer.core.vocab import check_single_token_label_words
from tasks import registry
from tasks.registry import VERBALIZER_ERROR
from tasks.specs import get_spec

TRUNCATE_MODES = ("right", "left")
DEFAULT_SHUFFLE_BUFFER = 16384
BATCH_KEYS = ("inputs", "inputs_mask", "targets", "targets_mask")


# ---- tasks for a backbone ---------------------------------------------------------------

def load_task(name: str, backbone, data_dir: str | None = None):
    """(seqio Task of `name` for the backbone's vocabulary, whether it is the masked-LM form).

    Targets carry the backbone's `target_delimiter` (" " for decoder-only)."""
    mlm = backbone.masked_lm
    task = tasks.get_task(name, backbone.vocab, add_eos=backbone.add_eos_to_targets,
                          data_dir=data_dir, mlm=backbone.config if mlm else None,
                          target_delimiter=backbone.target_delimiter)
    return task, mlm


def default_truncation(backbone) -> str:
    """The side a too-long input is cut on for this backbone (`Backbone.truncation_side`)."""
    return backbone.truncation_side


def label_words(spec, backbone) -> list[str]:
    """The label words of `spec` in the form `backbone` scores: the masked-LM
    verbalizer for a masked LM, the task's label words after the backbone's
    target delimiter otherwise (empty for generative tasks). Prompt
    initializers ('label' init) and scoring use these."""
    if backbone.masked_lm:
        return list(spec.mlm_label_words or ())
    return [backbone.target_delimiter + w for w in spec.label_words or ()]


# ---- label candidates for rank classification ------------------------------------------

def label_candidates(spec, vocabulary, add_eos: bool, target_len: int, *, mlm: bool = False,
                     target_delimiter: str = ""):
    """Targets of every label word, for `Backbone.score_candidates`.

    Args:
      spec: a TaskSpec or dataset name (classification).
      vocabulary: the backbone's seqio vocabulary.
      add_eos: append EOS (as the task's targets do).
      target_len: Lt.
      mlm: use the task's masked-LM label words.
      target_delimiter: put before each label word (as the task's targets;
        `Backbone.target_delimiter`); ignored with `mlm`.
    Returns:
      (candidates int32 [C, Lt] right-padded, candidates_mask int32 [C, Lt]).
    Raises:
      ConfigError if a label word does not fit in target_len, two label words
      tokenize identically, or (without EOS) one label's tokens are a prefix of
      another's, which would make rank classification by summed
      log-likelihood favour the shorter label for any input; with `mlm`, if a
      label word is not exactly one token (message names the word and task).
    """
    spec = get_spec(spec)
    words = spec.mlm_label_words if mlm else spec.label_words
    if not words:
        raise ConfigError(f"task {spec.name!r} ({spec.type}) has no label words: it is scored "
                          "by decoding, not by rank classification.")
    if mlm:  # one token each, read at the mask slot; the error names the word and the task
        check_single_token_label_words(vocabulary, words, spec.name)
    elif target_delimiter:
        words = tuple(target_delimiter + w for w in words)
    seqs = []
    for word in words:
        ids = [int(i) for i in vocabulary.encode(word)]
        if add_eos:
            ids.append(int(vocabulary.eos_id))
        if not ids:
            raise ConfigError(f"task {spec.name!r}: label word {word!r} encodes to no tokens.")
        if len(ids) > target_len:
            raise ConfigError(f"task {spec.name!r}: label word {word!r} is {len(ids)} tokens "
                              f"(EOS included: {add_eos}) but target length is {target_len}; "
                              "raise the target length.")
        seqs.append(ids)
    for i, a in enumerate(seqs):
        for j, b in enumerate(seqs):
            if i != j and len(a) <= len(b) and b[:len(a)] == a:
                what = "tokenize identically" if a == b else "make a prefix collision"
                raise ConfigError(
                    f"task {spec.name!r}: label words {words[i]!r} and {words[j]!r} {what} "
                    f"under this vocabulary ({a} vs {b}), so rank classification is ambiguous; "
                    "score with EOS appended or choose other label words.")
    cands = np.zeros((len(seqs), target_len), np.int32)
    mask = np.zeros((len(seqs), target_len), np.int32)
    for i, ids in enumerate(seqs):
        cands[i, :len(ids)] = ids
        mask[i, :len(ids)] = 1
    return cands, mask


# ---- per-example conversion (tf) --------------------------------------------------------

def _fit_tokens(tokens, length: int, *, keep_last: bool, from_left: bool, mask_id=None):
    """Truncates a 1-D int32 tensor to at most `length` (rules in the module docstring)."""
    import tensorflow as tf

    n = tf.size(tokens)
    if mask_id is not None:
        # Drop the tokens right before the mask slot, then (if the part from the
        # mask on is itself too long) cut at the end keeping the last token.
        pos = tf.argmax(tf.cast(tf.equal(tokens, mask_id), tf.int32), output_type=tf.int32)
        keep_head = tf.maximum(length - (n - pos), 1)
        tokens = tf.cond(n > length,
                         lambda: tf.concat([tokens[:keep_head], tokens[pos:]], 0),
                         lambda: tokens)
        return _fit_tokens(tokens, length, keep_last=True, from_left=False)
    if from_left:
        return tokens[tf.maximum(n - length, 0):]
    if keep_last:
        return tf.cond(n > length,
                       lambda: tf.concat([tokens[:length - 1], tokens[-1:]], 0),
                       lambda: tokens)
    return tokens[:length]


def _pad(tokens, length: int, *, left: bool):
    import tensorflow as tf

    tokens = tf.cast(tokens, tf.int32)
    pad = length - tf.size(tokens)
    zeros = tf.zeros([pad], tf.int32)
    ones = tf.ones_like(tokens)
    if left:
        ids, mask = tf.concat([zeros, tokens], 0), tf.concat([zeros, ones], 0)
    else:
        ids, mask = tf.concat([tokens, zeros], 0), tf.concat([ones, zeros], 0)
    ids.set_shape([length])
    mask.set_shape([length])
    return ids, mask


def make_converter(task, lengths: Mapping[str, int], truncate_inputs: str = "right"):
    """A tf function: tokenized seqio example -> fixed-length layout (no batch dim)."""
    if truncate_inputs not in TRUNCATE_MODES:
        raise ConfigError(f"truncate_inputs={truncate_inputs!r}; use one of {TRUNCATE_MODES}.")
    for key in ("inputs", "targets"):
        if int(lengths.get(key, 0)) < 1:
            raise ConfigError(f"lengths needs a positive {key!r} entry, got {dict(lengths)}.")
    li, lt = int(lengths["inputs"]), int(lengths["targets"])
    feats = task.output_features
    mask_id, official = _mlm_form(task)
    inputs_eos = bool(feats["inputs"].add_eos) or official
    if official:
        truncate_inputs = "right"
    targets_eos = bool(feats["targets"].add_eos)

    import tensorflow as tf

    @tf.autograph.experimental.do_not_convert  # static Python branches only
    def convert(ex):
        inputs = _fit_tokens(ex["inputs"], li, keep_last=inputs_eos,
                             from_left=truncate_inputs == "left", mask_id=mask_id)
        targets = _fit_tokens(ex["targets"], lt, keep_last=targets_eos, from_left=False)
        out = {}
        out["inputs"], out["inputs_mask"] = _pad(inputs, li, left=True)
        out["targets"], out["targets_mask"] = _pad(targets, lt, left=False)
        if "label" in ex:
            out["label"] = tf.cast(ex["label"], tf.int32)
        out["valid"] = tf.constant(1, tf.int32)
        return out

    return convert


def _mlm_form(task):
    """(the mask id a masked-LM form's inputs hold or None, whether it is the official form)."""
    info = registry.find_registered(task)
    if info is None or info.mlm is None:
        return None, False
    if info.mlm.layout == "official":
        return None, True
    return info.mlm.mask_id, False


# ---- streams ----------------------------------------------------------------------------

def _check_split(task, split: str) -> None:
    splits = list(task.splits)
    if split not in splits:
        info = registry.find_registered(task)
        extra = " (it is evaluation-only)" if info and info.spec.evaluation_only else ""
        raise DataError(f"task {task.name!r} has no split {split!r}{extra}; it has {splits}.")


def _examples(task, split: str, shard_index: int, num_shards: int):
    if not 0 <= shard_index < num_shards:
        raise ConfigError(f"shard_index {shard_index} is not in [0, {num_shards}).")
    _check_split(task, split)
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                          use_cached=False, trim_output_features=False)
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index)
    return ds


def _numpy_batches(ds, what: str):
    """Iterates a tf dataset as numpy, turning verbalizer assertions into DataError."""
    import tensorflow as tf

    it = iter(ds.as_numpy_iterator())
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as e:
            msg = str(e.message if hasattr(e, "message") else e)
            if VERBALIZER_ERROR in msg:
                detail = msg.split("assertion failed:", 1)[-1].strip().splitlines()[0]
                detail = re.sub(r"^\[(.*)\] \[(.*)\]$", r"\1 \2", detail.replace("\\'", "'"))
                raise DataError(f"{what}: {detail}. Drop or fix such examples, or use "
                                "a split that is labeled.") from None
            raise
        yield item


def _class_seed(seed: int, label: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(label)]).generate_state(1)[0])


def _balanced(ds, task, seed: int, buffer_size: int, where: str):
    """The class-balanced stream of converted examples `ds` (module docstring)."""
    import tensorflow as tf

    info = registry.find_registered(task)
    if info is None or not info.spec.is_classification:
        raise ConfigError(f"{where}: class-balanced sampling needs a classification task from "
                          "tasks.get_task; this one has no labels. Set balance_classes=False.")
    words = info.spec.mlm_label_words if info.mlm is not None else info.spec.label_words
    streams = []
    for label, word in enumerate(words):
        one = ds.filter(lambda ex, c=label: tf.equal(ex["label"], c))
        if not any(True for _ in _numpy_batches(one.take(1), where)):
            raise DataError(f"{where} has no example of label {label} ({word!r}), so it cannot "
                            "be sampled class-balanced; set balance_classes=False (or use fewer "
                            "shards).")
        streams.append(one.shuffle(buffer_size, seed=_class_seed(seed, label),
                                   reshuffle_each_iteration=True).repeat())
    turns = tf.data.Dataset.range(len(words)).repeat()
    return tf.data.Dataset.choose_from_datasets(streams, turns)


def iterate_batches(task, split: str, batch_size: int, lengths: Mapping[str, int], seed: int = 0,
                    start_step: int = 0, shard_index: int = 0, num_shards: int = 1, *,
                    shuffle: bool = True, repeat: bool = True, truncate_inputs: str = "right",
                    shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
                    balance_classes: bool = False,
                    ) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `task`'s `split` in the shared layout (see module docstring).

    Args:
      task: a seqio Task from `tasks.get_task`.
      lengths: {"inputs": Li, "targets": Lt}.
      seed: shuffle seed.
      start_step: number of batches to skip (resume position).
      shard_index, num_shards: this data-parallel shard; batch_size is per shard.
      shuffle, repeat: training streams use both; an eval stream uses neither
        and ends with a last batch filled up (`valid` = 0) by repeating its last
        real example.
      balance_classes: a class-balanced training stream (module docstring);
        needs shuffle and repeat.
    Yields:
      dicts of numpy int32 arrays.
    Raises:
      DataError for a missing split, no examples, or a label outside the verbalizer.
    """
    import tensorflow as tf

    if batch_size < 1 or start_step < 0:
        raise ConfigError(f"batch_size must be >= 1 and start_step >= 0, got {batch_size}, "
                          f"{start_step}.")
    where = f"task {task.name!r} split {split!r}"
    if balance_classes and not (shuffle and repeat):
        raise ConfigError("balance_classes is for training streams (shuffle=True, repeat=True); "
                          "evaluation reads the split as it is.")
    ds = _examples(task, split, shard_index, num_shards)
    ds = ds.map(make_converter(task, lengths, truncate_inputs), num_parallel_calls=tf.data.AUTOTUNE)
    if balance_classes:
        ds = _balanced(ds, task, seed, shuffle_buffer_size, where)
    else:
        if shuffle:
            ds = ds.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
    if start_step:
        ds = ds.skip(start_step * batch_size)
    ds = ds.batch(batch_size, drop_remainder=repeat).prefetch(2)
    produced = False
    for batch in _numpy_batches(ds, where):
        produced = True
        n = len(batch["valid"])
        if n < batch_size:
            fill = np.r_[np.arange(n), np.full(batch_size - n, n - 1)]
            batch = {k: v[fill] for k, v in batch.items()}
            batch["valid"][n:] = 0
        yield batch
    if not produced and (repeat or start_step == 0):
        raise DataError(f"{where} yields no examples (shard {shard_index} of {num_shards}); "
                        "check the data files or use fewer shards.")


# ---- length buckets ----------------------------------------------------------------------

# A batch is cut to the smallest of LENGTH_BUCKETS evenly spaced lengths that holds all its
# real tokens, so short batches cost less and at most LENGTH_BUCKETS shapes per field compile.
LENGTH_BUCKETS = 4


def bucket_lengths(length: int, buckets: int = LENGTH_BUCKETS) -> tuple[int, ...]:
    """`buckets` evenly spaced lengths ending at `length`: bucket_lengths(40) = (10, 20, 30, 40)."""
    step = -(-int(length) // max(1, int(buckets)))
    return tuple(sorted({min(int(length), step * i) for i in range(1, int(buckets) + 1)}))


def _bucket(needed: int, length: int, buckets: int) -> int:
    return next(b for b in bucket_lengths(length, buckets) if b >= max(1, needed))


def trim_to_bucket(batch: Mapping[str, np.ndarray], buckets: int = LENGTH_BUCKETS) -> dict:
    """The batch with only padding columns removed, down to a bucket length.

    inputs / inputs_mask [B, Li] (left-padded) lose columns at the left, targets /
    targets_mask [B, Lt] (right-padded) at the right, each to the smallest of
    `bucket_lengths(L, buckets)` that keeps every real token of every row. The
    result depends on the batch alone, so a resumed run trims exactly as an
    uninterrupted one; backbones mask padding, so scores change only by float
    summation order. Other keys are passed through.
    """
    out = dict(batch)
    if "inputs_mask" in batch:
        li = batch["inputs_mask"].shape[-1]
        keep = _bucket(int(np.max(np.sum(batch["inputs_mask"] != 0, axis=-1), initial=0)), li, buckets)
        for k in ("inputs", "inputs_mask"):
            out[k] = batch[k][:, li - keep:]
    if "targets_mask" in batch:
        lt = batch["targets_mask"].shape[-1]
        keep = _bucket(int(np.max(np.sum(batch["targets_mask"] != 0, axis=-1), initial=0)), lt, buckets)
        for k in ("targets", "targets_mask"):
            out[k] = batch[k][:, :keep]
    return out


def references(task, split: str, shard_index: int = 0, num_shards: int = 1) -> list:
    """Gold references in the order of the eval stream (shuffle=False, repeat=False).

    Classification: label indices; QA: lists of gold answers; otherwise the
    target text.
    """
    ds = _examples(task, split, shard_index, num_shards)
    out = []
    for ex in _numpy_batches(ds, f"task {task.name!r} split {split!r}"):
        if "label" in ex:
            out.append(int(ex["label"]))
        elif "answers" in ex:
            out.append([a.decode("utf-8") for a in ex["answers"]])
        else:
            out.append(ex["targets_pretokenized"].decode("utf-8"))
    return out
