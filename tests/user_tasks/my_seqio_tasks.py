"""A seqio Task registered the way a T5X user registers one (tests/test_seqio_user_task.py).

The data is a small CSV file named by $MY_TASK_CSV (columns split,text,label):
read with tf.data, tokenized with seqio's byte vocabulary, T5's
`label_classes` metadata on the postprocessor and seqio's metric functions.
"""

import functools
import os

import seqio
import tensorflow as tf

LABELS = ("no", "yes")


def _read(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    ds = tf.data.experimental.CsvDataset(os.environ["MY_TASK_CSV"], [tf.string] * 3, header=True)
    ds = ds.filter(lambda s, text, label: tf.equal(s, split))
    return ds.map(lambda s, text, label: {"sentence": text, "label": label})


def _to_text2text(ds):
    return ds.map(lambda ex: {"inputs": tf.strings.join(["question: ", ex["sentence"]]),
                              "targets": ex["label"]})


def string_label_to_class_id(string_label, example=None, label_classes=()):
    """T5's postprocessor: the label word's index, -1 when it is none."""
    del example
    return label_classes.index(string_label) if string_label in label_classes else -1


def accuracy(targets, predictions):
    return {"accuracy": 100.0 * sum(t == p for t, p in zip(targets, predictions)) / len(targets)}


VOCAB = seqio.ByteVocabulary()
seqio.TaskRegistry.add(
    "my_yes_no",
    source=seqio.FunctionDataSource(_read, splits=("train", "validation")),
    preprocessors=[_to_text2text, seqio.preprocessors.tokenize,
                   seqio.preprocessors.append_eos_after_trim],
    output_features={"inputs": seqio.Feature(VOCAB), "targets": seqio.Feature(VOCAB)},
    postprocess_fn=functools.partial(string_label_to_class_id, label_classes=list(LABELS)),
    metric_fns=[accuracy],
)
seqio.MixtureRegistry.add("my_yes_no_mix", [("my_yes_no", 1.0)])
