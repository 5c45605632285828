"""Evaluation of prompts: batched rank classification and greedy decoding.

Classification tasks are scored by rank classification: every example's
inputs are encoded once and all label words are scored in ONE jitted call
(`Backbone.score_candidates`, [B, C] log-likelihoods); the prediction is the
label with the highest total log-likelihood of its target tokens. Generative
tasks are decoded greedily and the text is scored by the task's metrics.

Compilation: the jitted functions are cached per backbone object and shape,
and the prompt is an argument, so evaluating another prompt of the same shape
never recompiles (the transfer matrix relies on it). `Scorer.*_stack` runs a
stack of K prompts `[K, L, D]` in chunks of `prompts_per_call` prompts (one
vmapped call each, the frozen params shared), so stacks of any size share
one compilation.

An `EvalSet` is a fixed, ordered subset of a split converted once to padded
arrays, so every evaluation in a run sees the same examples.

`Scorer.evaluate_full` also returns what the metrics were computed from (the
[N, C] label-word scores and the per-example predictions), at no extra forward
pass: `evaluation_intervals` turns them into the 95% intervals of accuracy and
balanced accuracy, and `write_predictions` into one JSON line per example.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from ptransfer import data
from ptransfer.core import fileio, intervals, sharding
from ptransfer.core.errors import ConfigError, DataError
from tasks import compute_metrics

log = logging.getLogger(__name__)

# ---- the evaluation set ------------------------------------------------------

@dataclasses.dataclass
class EvalSet:
    """A fixed ordered set of examples as padded arrays (built once per run).

    spec:                  the task's TaskSpec (label words, metrics)
    inputs, inputs_mask:   int32 [N, Li] (left-padded, the shared batch layout)
    labels:                int32 [N] label index (classification), else None
    candidates(_mask):     int32 [C, Lt] label-word targets (classification)
    references:            per-example gold answers / target texts (generation)
    max_decode_len:        greedy decoding length (generation)
    indices:               int [N] each example's position in the split's fixed
                           order (None: the first N, 0..N-1)
    """

    spec: Any
    split: str
    inputs: np.ndarray
    inputs_mask: np.ndarray
    labels: np.ndarray | None = None
    candidates: np.ndarray | None = None
    candidates_mask: np.ndarray | None = None
    references: Sequence[Any] = ()
    max_decode_len: int = 32
    indices: np.ndarray | None = None

    def __post_init__(self):
        if len(self.inputs) == 0:
            raise DataError(f"task {self.task!r} split {self.split!r} has no examples to evaluate "
                            "on; check the split name and the data (`ptransfer tasks`).")

    @property
    def split_indices(self) -> np.ndarray:
        """int [N]: each example's position in the split."""
        return np.arange(self.size) if self.indices is None else np.asarray(self.indices)

    @property
    def task(self) -> str:
        return self.spec.name

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def is_classification(self) -> bool:
        return bool(self.spec.is_classification)

    @property
    def primary_metric(self) -> str:
        return self.spec.primary_metric


EVAL_SUBSETS = ("first", "stratified")


def stratified_indices(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """A seeded stratified sample of `size` rows of `labels` [N], in split order.

    Every class gets its proportional share (largest remainders, ties to the
    smaller class id), drawn uniformly within the class with
    `np.random.default_rng(seed)`; the same labels, size and seed give the same
    rows, so every prompt compared on a target sees the same examples.
    """
    labels = np.asarray(labels)
    if size >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / len(labels)
    take = np.floor(quota).astype(int)
    order = sorted(range(len(classes)), key=lambda c: (-(quota[c] - take[c]), c))
    for c in order[: size - int(take.sum())]:
        take[c] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == cls), size=int(k), replace=False)
              for cls, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


# (task object, the arguments) -> (task, EvalSet), while `reusing_eval_sets` is active
_EVAL_SETS: dict | None = None


@contextlib.contextmanager
def reusing_eval_sets():
    """Within the block, `build_eval_set` reads each (task, split, subset, lengths,
    vocabulary) once and returns the same EvalSet again (arrays read-only): a run of
    many stages (`ptransfer demo`) reads the same evaluation sets many times, and the
    data does not change under it. Outside the block every call reads the data."""
    global _EVAL_SETS
    outer, _EVAL_SETS = _EVAL_SETS, ({} if _EVAL_SETS is None else _EVAL_SETS)
    try:
        yield
    finally:
        _EVAL_SETS = outer


def build_eval_set(task, spec, backbone, split: str, max_examples: int | None,
                   lengths: Mapping[str, int], *, truncate_inputs: str = "right",
                   mlm: bool = False, chunk: int = 256, subset: str = "first",
                   subset_seed: int = 0) -> EvalSet:
    """`max_examples` of `split` (None: all), converted once to padded arrays, with
    the label candidates or references (the same object again inside
    `reusing_eval_sets`).

    subset: 'first' takes the first `max_examples` in the split's fixed order;
      'stratified' (classification tasks) reads the whole split and keeps a
      seeded stratified sample (`stratified_indices`), so a subset keeps the
      split's class proportions (a split sorted by label has no single-class
      head). Generative tasks always take the first examples.
    """
    if subset not in EVAL_SUBSETS:
        raise ConfigError(f"eval subset {subset!r} is not one of {EVAL_SUBSETS}.")
    if _EVAL_SETS is None:
        return _read_eval_set(task, spec, backbone, split, max_examples, lengths,
                              truncate_inputs, mlm, chunk, subset, subset_seed)
    # the task object stands for its vocabulary, EOS, delimiter and data dir (tasks.get_task
    # registers a new one when any of them changes); it is kept so its id is not reused
    key = (id(task), spec.name, split, max_examples, tuple(sorted(lengths.items())),
           truncate_inputs, mlm, chunk, subset, subset_seed, id(backbone.vocab))
    if key not in _EVAL_SETS:
        eval_set = _read_eval_set(task, spec, backbone, split, max_examples, lengths,
                                  truncate_inputs, mlm, chunk, subset, subset_seed)
        for value in vars(eval_set).values():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
        _EVAL_SETS[key] = (task, backbone.vocab, eval_set)
    return _EVAL_SETS[key][-1]


def _read_eval_set(task, spec, backbone, split, max_examples, lengths, truncate_inputs, mlm,
                   chunk, subset, subset_seed) -> EvalSet:
    stratify = subset == "stratified" and spec.is_classification and max_examples is not None
    want = None if max_examples is None or stratify else int(max_examples)
    rows: dict[str, list] = {}
    n = 0
    stream = data.iterate_batches(task, split, chunk if want is None else min(chunk, want),
                                      lengths, shuffle=False, repeat=False,
                                      truncate_inputs=truncate_inputs)
    for batch in stream:
        keep = batch["valid"] > 0
        for key in ("inputs", "inputs_mask", "label"):
            if key in batch:
                rows.setdefault(key, []).append(batch[key][keep])
        n += int(keep.sum())
        if want is not None and n >= want:
            break
    stream.close()
    if n == 0:
        raise DataError(f"task {spec.name!r} split {split!r} has no examples to evaluate on.")
    arrays = {k: np.concatenate(v)[:want] for k, v in rows.items()}
    kw: dict[str, Any] = {}
    if stratify:
        keep = stratified_indices(arrays["label"], int(max_examples), subset_seed)
        arrays = {k: v[keep] for k, v in arrays.items()}
        kw["indices"] = keep.astype(np.int64)
    if spec.is_classification:
        kw["labels"] = arrays["label"].astype(np.int32)
        kw["candidates"], kw["candidates_mask"] = data.label_candidates(
            spec, backbone.vocab, backbone.add_eos_to_targets, int(lengths["targets"]), mlm=mlm,
            target_delimiter=backbone.target_delimiter)
    else:
        refs = data.references(task, split)
        kw["references"] = refs[:len(arrays["inputs"])]
        kw["max_decode_len"] = int(lengths["targets"])
    return EvalSet(spec=spec, split=split, inputs=arrays["inputs"].astype(np.int32),
                   inputs_mask=arrays["inputs_mask"].astype(np.int32), **kw)


# ---- the scorer --------------------------------------------------------------

def to_host(x) -> np.ndarray:
    """A (possibly multi-host) jax.Array -> numpy, gathered across processes when needed."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class Scorer:
    """Evaluates prompts of one backbone.

    Args:
      backbone: the frozen `Backbone`.
      params: its params as placed for this mesh (default `backbone.params`).
      batch_size: examples per call (a multiple of the mesh's data axis).
      mesh: when given, batches are split over 'data' and prompts replicated;
        default: the mesh the params are placed on, if any, so that a scorer of
        mesh-placed params reuses what a training run compiled for them.
      prompts_per_call: how many prompts of a stack one call evaluates at once;
        1 scores them one by one with the single-prompt executable (no second
        compilation where a run's evaluations already compiled it).
    """

    def __init__(self, backbone, *, params=None, batch_size: int = 32, mesh=None,
                 prompts_per_call: int = 4):
        if batch_size <= 0:
            raise ConfigError(f"eval batch size must be positive, got {batch_size}.")
        self.backbone = backbone
        self.params = backbone.params if params is None else params
        self.batch_size = int(batch_size)
        mesh = sharding.mesh_of(self.params) if mesh is None else mesh
        self.mesh = mesh
        self.prompts_per_call = max(1, int(prompts_per_call))
        if mesh is not None:
            sharding.check_batch_divisible(self.batch_size, mesh)
            self._batch_sharding = sharding.batch_sharding(mesh)
            self._replicated = sharding.replicated(mesh)
        else:
            self._batch_sharding = self._replicated = None
        bb = backbone
        self._score = bb.compiled("score", lambda: jax.jit(bb.score_candidates))
        # One call scores a chunk of exactly prompts_per_call prompts [P, L, D], so
        # stacks of every size (a matrix's sources, cross-model cells) share one compile.
        self._score_stack = bb.compiled("score_stack", lambda: jax.jit(jax.vmap(
            bb.score_candidates, in_axes=(None, 0, None, None, None, None))))
        self._decode = bb.compiled("decode", lambda: jax.jit(bb.greedy_decode, static_argnums=(4,)))

    # -- batching -----------------------------------------------------------

    def _batches(self, eval_set: EvalSet):
        """Yields (start, n_real, inputs, inputs_mask) with the last batch padded by
        repeating row 0 (so the batch size stays fixed), its padding-only columns cut
        to a bucket length (`data.trim_to_bucket`: at most LENGTH_BUCKETS input
        lengths compile; single-process runs only, so hosts never disagree)."""
        n, bs = eval_set.size, self.batch_size
        trim = jax.process_count() == 1
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            idx = np.arange(start, start + bs)
            idx[idx >= n] = 0
            part = {"inputs": eval_set.inputs[idx], "inputs_mask": eval_set.inputs_mask[idx]}
            if trim:
                part = data.trim_to_bucket(part)
            yield (start, stop - start, sharding.place_host_array(part["inputs"], self._batch_sharding),
                   sharding.place_host_array(part["inputs_mask"], self._batch_sharding))

    def _prompt(self, prompt):
        if prompt is None:
            return None
        prompt = np.asarray(prompt, np.float32)
        self.backbone.check_prompt(prompt)
        return sharding.place_host_array(prompt, self._replicated)

    def _candidates(self, eval_set: EvalSet):
        if eval_set.candidates is None:
            raise ConfigError(f"task {eval_set.task!r} has no label words to rank.")
        return (sharding.place_host_array(eval_set.candidates, self._replicated),
                sharding.place_host_array(eval_set.candidates_mask, self._replicated))

    # -- raw outputs --------------------------------------------------------

    def candidate_log_likelihoods(self, prompt, eval_set: EvalSet) -> np.ndarray:
        """float32 [N, C]: log-likelihood of each label word for each example."""
        p = self._prompt(prompt)
        c, cm = self._candidates(eval_set)
        out = np.zeros((eval_set.size, len(eval_set.candidates)), np.float32)
        for start, n, x, xm in self._batches(eval_set):
            scores = self._score(self.params, p, x, xm, c, cm)
            out[start:start + n] = to_host(scores)[:n]
        return out

    def candidate_log_likelihoods_stack(self, prompts, eval_set: EvalSet) -> np.ndarray:
        """float32 [K, N, C] for a stack of prompts [K, L, D], scored prompts_per_call
        at a time (the last chunk filled up with prompt 0), so any K reuses one
        compilation per batch shape."""
        prompts = np.asarray(prompts, np.float32)
        if prompts.ndim != 3:
            raise ConfigError(f"a prompt stack must be [K, L, D], got {prompts.shape}.")
        self.backbone.check_prompt(prompts[0])
        if self.prompts_per_call == 1:
            return np.stack([self.candidate_log_likelihoods(p, eval_set) for p in prompts])
        k, per = len(prompts), self.prompts_per_call
        fill = np.r_[np.arange(k), np.zeros(-k % per, np.int64)]
        chunks = [sharding.place_host_array(prompts[fill[i:i + per]], self._replicated)
                  for i in range(0, len(fill), per)]
        c, cm = self._candidates(eval_set)
        out = np.zeros((k, eval_set.size, len(eval_set.candidates)), np.float32)
        for start, n, x, xm in self._batches(eval_set):
            scores = np.concatenate([to_host(self._score_stack(self.params, ps, x, xm, c, cm))
                                     for ps in chunks])
            out[:, start:start + n] = scores[:k, :n]
        return out

    def decode(self, prompt, eval_set: EvalSet) -> np.ndarray:
        """int32 [N, max_decode_len] greedy continuations (0 after EOS)."""
        p = self._prompt(prompt)
        out = np.zeros((eval_set.size, eval_set.max_decode_len), np.int32)
        for start, n, x, xm in self._batches(eval_set):
            ids = self._decode(self.params, p, x, xm, eval_set.max_decode_len)
            out[start:start + n] = to_host(ids)[:n]
        return out

    # -- metrics ------------------------------------------------------------

    @staticmethod
    def metrics_from_scores(scores: np.ndarray, eval_set: EvalSet) -> dict[str, float]:
        """The task's metrics from [N, C] rank-classification log-likelihoods."""
        predictions = np.argmax(scores, axis=-1)
        return {k: float(v) for k, v in
                compute_metrics(eval_set.spec, eval_set.labels.tolist(), predictions.tolist()).items()}

    def evaluate(self, prompt, eval_set: EvalSet) -> dict[str, float]:
        """The task's metrics for one prompt (None: no prompt)."""
        return self.evaluate_full(prompt, eval_set).metrics

    def evaluate_full(self, prompt, eval_set: EvalSet) -> "Evaluation":
        """The task's metrics for one prompt with the scores and predictions behind them."""
        t0 = time.perf_counter()
        if eval_set.is_classification:
            scores = self.candidate_log_likelihoods(prompt, eval_set)
            out = Evaluation(self.metrics_from_scores(scores, eval_set),
                             np.argmax(scores, axis=-1), scores)
        else:
            texts = self._decoded_texts(self.decode(prompt, eval_set))
            out = Evaluation(self._text_metrics(texts, eval_set), texts)
        log.debug("eval %s/%s (%d examples) in %.2fs", eval_set.task, eval_set.split,
                  eval_set.size, time.perf_counter() - t0)
        return out

    def evaluate_stack(self, prompts, eval_set: EvalSet) -> list[dict[str, float]]:
        """The task's metrics for each prompt of a stack [K, L, D]."""
        if eval_set.is_classification:
            scores = self.candidate_log_likelihoods_stack(prompts, eval_set)
            return [self.metrics_from_scores(s, eval_set) for s in scores]
        return [self.evaluate(p, eval_set) for p in np.asarray(prompts)]

    def _decoded_texts(self, ids: np.ndarray) -> list[str]:
        vocab = self.backbone.vocab
        return [vocab.decode([int(t) for t in row if t > 0]).strip() for row in ids]

    @staticmethod
    def _text_metrics(texts: Sequence[str], eval_set: EvalSet) -> dict[str, float]:
        return {k: float(v) for k, v in
                compute_metrics(eval_set.spec, list(eval_set.references), list(texts)).items()}


# ---- per-example results -----------------------------------------------------

@dataclasses.dataclass
class Evaluation:
    """One prompt's evaluation on an EvalSet.

    metrics:      the task's metrics (0-100)
    predictions:  int [N] predicted label index (classification; argmax of
                  `scores`), or the N decoded texts (generation)
    scores:       float32 [N, C] label-word log-likelihoods (classification), else None
    """

    metrics: dict[str, float]
    predictions: Any
    scores: np.ndarray | None = None


def evaluation_intervals(evaluation: Evaluation, eval_set: EvalSet, *,
                         seed: int = 0) -> dict[str, list[float] | None]:
    """{accuracy_ci, balanced_accuracy_ci} [low, high] (95%) of a classification
    evaluation: Wilson for accuracy, a seeded bootstrap over the examples
    (`intervals.RESAMPLES` resamples) for balanced accuracy; {} for generation."""
    if not eval_set.is_classification:
        return {}
    return intervals.classification_intervals(eval_set.labels, evaluation.predictions, seed=seed)


def prediction_rows(evaluation: Evaluation, eval_set: EvalSet) -> list[dict]:
    """One dict per example: index (in the split), label, prediction, scores
    (classification: label indices and the label words' log-likelihoods [C]);
    index, reference, prediction text (generation)."""
    index = eval_set.split_indices
    if eval_set.is_classification:
        return [{"index": int(i), "label": int(y), "prediction": int(p),
                 "scores": [float(v) for v in s]}
                for i, y, p, s in zip(index, eval_set.labels, evaluation.predictions,
                                      evaluation.scores)]
    return [{"index": int(i), "reference": r, "prediction": p}
            for i, r, p in zip(index, eval_set.references, evaluation.predictions)]


def write_predictions(path: str, evaluation: Evaluation, eval_set: EvalSet) -> None:
    """`prediction_rows` as JSON lines at `path`, written atomically."""
    with fileio.atomic_open(path, "w") as f:
        for row in prediction_rows(evaluation, eval_set):
            f.write(json.dumps(row, sort_keys=True) + "\n")
