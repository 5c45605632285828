"""The prompt-tuning trainer: one jitted step, exact resumption, evaluation, bank output.

The step (`make_train_step`) is one jitted function of
`(prompt [L, D], opt_state, rng, params, batch)`. The gradient is taken with
respect to the prompt only; the frozen `params` are an ordinary argument,
never differentiated, never donated and never copied (they stay where
`shard_params` put them), while the prompt and optimizer state buffers are
donated and updated in place.

Loss (`loss`):
  'lm' (default)     the LM loss on the target tokens over the full vocabulary
                     (the paper's T5 prompt tuning), normalized by
                     `loss_normalization`:
      'token' (default)  -sum of target-token log-likelihoods / number of target
                         tokens in the batch (the mean per target token; T5X style)
      'sequence'         -mean over examples of each example's summed target
                         log-likelihood (the mean per sequence)
                     Only target tokens contribute; the backbone projects onto
                     the vocabulary only at the positions that predict a target.
  'verbalizer'       classification only: cross-entropy over the label words'
                     scores alone, -mean_b log softmax_c(s[b, c])[label_b], where
                     s[b, c] is the summed log-likelihood of label word c
                     (`Backbone.score_candidates`, the rank-classification
                     scores); for single-token label words this is the softmax
                     over the label words' logits, as the official RoBERTa code
                     trains. `loss_normalization` does not apply.

Partitioning: a `(data, model)` mesh (`training/sharding.py`); frozen
params sharded over 'model' by the logical rules, batches over 'data', the
prompt, optimizer state and RNG replicated. Multi-process runs read each
host's shard of the data and assemble the global batch
(`training/distributed.py`); only the primary host writes files.

Resumption: a checkpoint (`training/checkpointing.py`) holds the prompt, the
optimizer state, the RNG key, the best prompt so far and the optimizer state
at it, the step and the data position; the batch iterator restarts at that position. A run killed at any
moment and started again with the same command ends with a prompt bitwise
equal to an uninterrupted run's (on a fixed machine and device count).

Optimizer state at the start (`init_optimizer`): 'fresh' (a new optimizer
state, the default) or 'source': INIT_FROM is a bank entry whose run kept its
AdamW moments (the bank entry's adam_mu / adam_nu, the moments at its exported
prompt), and this run's AdamW starts from them with the step counter at zero,
as the official Prompt-Transferability code continues a source checkpoint for
TPT. A source trained with Adafactor has no AdamW moments: refused with a
ConfigError (use 'fresh'). An initializer that starts from no trained prompt
(random, vocab, labels, text) has no state to carry, so such a run starts
fresh under either setting (one PT run serves both). The bank entry and the
run identity record the setting in effect (`effective_init_optimizer`).

A non-finite loss, or a prompt / optimizer state that the update made
non-finite (checked after every step, so a divergence on the last step is
caught too), stops the run at once: nothing after the last good checkpoint
is saved, and the error names the step and that checkpoint.

One live run per local model dir: `hold_model_dir` flocks <model_dir>/.lock
from before the backbone is loaded until the run ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import logging
import math
import os
import socket
import time

import gin
import numpy as np

import tasks
from ptransfer import backbones, data, prompts, scoring
from ptransfer.backbones import check_compute_dtype, configure_backbone, load_backbone
from ptransfer.backbones.layers import check_remat
from ptransfer.bank import store as bank
from ptransfer.core import distributed, fileio, sharding
from ptransfer.core.configurable import build_configurable
from ptransfer.core.errors import CheckpointError, ConfigError, PtransferError
from ptransfer.core.hardware import auto_compute_dtype
from ptransfer.core.sharding import replicated, shard_params
from ptransfer.data import BATCH_KEYS
from ptransfer.training import checkpointing, metric_writers
from ptransfer.training.optimizer import (
    OptimizerConfig,
    adam_moments,
    compile_key,
    continued_state,
    learning_rate_schedule,
    make_optimizer,
    with_adam_moments,
)
from tasks import validation

log = logging.getLogger(__name__)


LOSSES = ("lm", "verbalizer")
EVAL_SCHEDULES = ("uniform", "log")
INIT_OPTIMIZERS = ("fresh", "source")
# balance_classes='auto' balances a task whose largest training class holds more than
# this many times the examples of its smallest (tweets 2.3, sms_spam 7.2, trec 14.7;
# mr 1.02, amazon 1.43, nyt 1.24 stay as sampled).
SKEWED_RATIO = 1.5
SOURCE_SCHEMES = ("file", "projected")  # initializers that start from a trained prompt
CANDIDATE_KEYS = ("candidates", "candidates_mask")


class NonFiniteLossError(PtransferError):
    """The training loss became NaN or inf."""


@gin.configurable(module="ptransfer")
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One prompt-tuning run (gin: `TrainConfig.<field>`, mostly via UPPER_CASE macros).

    backbone:          spec for `load_backbone` (`preset:t5_tiny`, `gguf:{cache}/...`,
                       `hf:<dir>`, `t5x:<preset>:<dir>`); `{cache}` is the asset cache
    task:              registered task name (`ptransfer tasks`)
    model_dir:         checkpoints, metrics.jsonl, TensorBoard events, final prompt
    prompt_length:     L
    init_from:         prompt initializer spec (see `ptransfer.prompts`)
    batch_size:        global batch (split over the mesh's 'data' axis and hosts)
    train_steps:       total optimizer steps (a resumed run continues up to it)
    eval_every:        evaluate every N steps (0: never); also at step 0
                       when `eval_at_start`. Each evaluation's metrics.jsonl line
                       carries accuracy_ci / balanced_accuracy_ci, the 95% intervals
                       (classification; from the same forward pass)
    eval_schedule:     'uniform' (every eval_every steps, default) or 'log' (as many
                       evaluations, log-spaced, where curves move most; see
                       `evaluation_steps`); the final step is always evaluated
    eval_examples:     size of the fixed validation subset (None: the whole split)
    eval_subset:       'stratified' (a seeded stratified sample of the split, default) or
                       'first' (its first eval_examples); see `scoring.build_eval_set`
    loss:              'lm' (the target tokens over the full vocabulary) or
                       'verbalizer' (cross-entropy over the label words only);
                       see the module docstring
    balance_classes:   train on a class-balanced stream (each label's examples
                       repeated on their own and taken in turn;
                       `ptransfer.data`); classification only. 'auto': on
                       exactly for tasks whose training split's class counts
                       are known (`TaskSpec.class_counts`, the offline corpora)
                       and skewed: the largest class more than SKEWED_RATIO
                       times the smallest (tweets, sms_spam, trec; not mr,
                       amazon, nyt). Resolved to True / False when the run
                       starts; the bank entry records the resolved value.
    shuffle_buffer_size: examples in the training stream's shuffle buffer (per
                       label when balanced; seqio's `shuffle_buffer_size`). The
                       first batch waits for the buffer to fill, so a short run on
                       a small model may set it lower; part of the run's identity
                       when not the default, since it changes the data order
    init_optimizer:    'fresh' or 'source' (carry the AdamW moments of the
                       INIT_FROM bank entry; see the module docstring)
    checkpoint_every:  save every N steps (and at the end and at each new best)
    keep_checkpoints:  how many of the latest checkpoints to keep (plus the best)
    bank_dir / run_name: where the bank entry goes (None: <model_dir>/bank; run
                       name None: the model dir's base name)
    export:            'best' (by `best_metric`, the task's first metric by default)
                       or 'final' prompt into the bank entry
    backbone_dtype:    storage dtype of the frozen weights (None: float32)
    compute_dtype:     the backbone's activation / matmul dtype, e.g. 'bfloat16'
                       (None: the backbone config's own, float32; 'auto':
                       bfloat16 where the hardware has bf16 dot products, else
                       None, `core.hardware.auto_compute_dtype`, resolved at
                       construction); part of the run's identity, since it
                       changes the numbers
    continue_with_changes: when MODEL_DIR holds this run with other optimizer
                       settings, continue it from its latest checkpoint with these
                       (CONTINUE_WITH_CHANGES; e.g. a lower learning rate after a
                       NaN). The prompt, step, RNG and best so far are restored; the
                       optimizer moments too where the state keeps its structure
                       (`optimizer.continued_state`). run_identity.json records the
                       new settings and, under 'continuations', the old ones and the
                       step. Anything else that differs is still refused.
    length_buckets:    each training batch loses its padding-only columns down to the
                       smallest of this many evenly spaced lengths that holds its real
                       tokens (`data.trim_to_bucket`; at most length_buckets^2 step
                       shapes compile). 1 keeps every batch at INPUT_LENGTH /
                       TARGET_LENGTH: one step shape, for runs so short that a second
                       compile costs more than the trimmed positions save. Speed only
                       (scores change by float summation order), so not part of the
                       run's identity
    remat:             per-layer rematerialization of the backbone in the backward
                       pass: 'none', 'full' (keep only layer inputs) or 'dots' (keep
                       weight-matmul outputs); None: the backbone's own ('none').
                       Memory and speed only, so not part of the run's identity: a
                       run that ran out of memory may resume with remat on
    """

    backbone: str
    task: str
    model_dir: str
    prompt_length: int
    init_from: str
    batch_size: int
    train_steps: int
    optimizer: OptimizerConfig = OptimizerConfig()
    seed: int = 0
    backbone_dtype: str | None = None
    compute_dtype: str | None = None
    remat: str | None = None
    input_length: int = 128
    target_length: int = 16
    length_buckets: int = data.LENGTH_BUCKETS
    train_split: str = "train"
    truncate_inputs: str | None = None   # None: 'left' for decoder-only, else 'right'
    data_dir: str | None = None
    eval_split: str = "validation"
    eval_every: int = 100
    eval_at_start: bool = True
    eval_schedule: str = "uniform"
    eval_examples: int | None = 256
    eval_subset: str = "stratified"
    eval_batch_size: int | None = None
    best_metric: str | None = None
    loss_normalization: str = "token"
    loss: str = "lm"
    balance_classes: bool | str = "auto"
    shuffle_buffer_size: int = data.DEFAULT_SHUFFLE_BUFFER
    init_optimizer: str = "fresh"
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    mesh_data: int = -1
    mesh_model: int = 1
    bank_dir: str | None = None
    run_name: str | None = None
    export: str = "best"
    progress: bool = True
    continue_with_changes: bool = False

    def __post_init__(self):
        if self.compute_dtype == "auto":  # resolved now, so a run's identity names the dtype
            object.__setattr__(self, "compute_dtype", auto_compute_dtype())

    def validate(self) -> "TrainConfig":
        positive = {"PROMPT_LENGTH": self.prompt_length, "BATCH_SIZE": self.batch_size,
                    "TRAIN_STEPS": self.train_steps, "input_length": self.input_length,
                    "target_length": self.target_length,
                    "SHUFFLE_BUFFER_SIZE": self.shuffle_buffer_size,
                    "TRAIN_LENGTH_BUCKETS": self.length_buckets}
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("eval_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.loss_normalization not in ("token", "sequence"):
            raise ConfigError(f"loss_normalization {self.loss_normalization!r}: use 'token' or "
                              "'sequence'.")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss {self.loss!r}: use one of {LOSSES} ('lm': the target "
                              "tokens over the vocabulary, 'verbalizer': the label words only).")
        if self.init_optimizer not in INIT_OPTIMIZERS:
            raise ConfigError(f"init_optimizer {self.init_optimizer!r}: use one of "
                              f"{INIT_OPTIMIZERS}.")
        if self.effective_init_optimizer() == "source" and self.optimizer.name != "adamw":
            raise ConfigError(f"INIT_OPTIMIZER='source' continues a source run's AdamW moments, "
                              f"but this run's optimizer is {self.optimizer.name!r}; use "
                              "OPTIMIZER='adamw_t5' (or 'adamw_roberta') or INIT_OPTIMIZER='fresh'.")
        if self.balance_classes not in (True, False, "auto"):
            raise ConfigError(f"balance_classes {self.balance_classes!r}: use True, False or "
                              "'auto' (balanced exactly where the task's known class counts "
                              "are skewed).")
        if self.eval_schedule not in EVAL_SCHEDULES:
            raise ConfigError(f"eval_schedule {self.eval_schedule!r}: use one of "
                              f"{EVAL_SCHEDULES}.")
        if self.export not in ("best", "final"):
            raise ConfigError(f"export {self.export!r}: use 'best' or 'final'.")
        if not self.model_dir:
            raise ConfigError("MODEL_DIR is empty; give a directory for checkpoints.")
        if self.eval_subset not in scoring.EVAL_SUBSETS:
            raise ConfigError(f"eval_subset {self.eval_subset!r} is not one of "
                              f"{scoring.EVAL_SUBSETS}.")
        if self.eval_examples is not None and self.eval_examples <= 0:
            raise ConfigError(f"eval_examples must be positive or None, got {self.eval_examples}.")
        if self.compute_dtype is not None:
            check_compute_dtype(self.compute_dtype, "TrainConfig.compute_dtype (COMPUTE_DTYPE)")
        if self.remat is not None:
            check_remat(self.remat, "TrainConfig.remat (REMAT)")
        self.optimizer.validate()
        return self

    def identity(self, init: str | None = None) -> dict:
        """What must match for a model dir to hold this run (not steps / eval / mesh).

        `init`: the initializer with its settings (`prompts.describe_init`)."""
        out = {
            "backbone": self.backbone, "backbone_dtype": self.backbone_dtype, "task": self.task,
            "compute_dtype": self.compute_dtype,
            "prompt_length": self.prompt_length, "init_from": init or self.init_from,
            "seed": self.seed, "truncate_inputs": self.truncate_inputs,
            "batch_size": self.batch_size, "input_length": self.input_length,
            "target_length": self.target_length, "train_split": self.train_split,
            "loss_normalization": self.loss_normalization,
            "optimizer": self.optimizer.to_dict(),
        }
        # Only when set, so model dirs written before these options still resume.
        if self.loss != "lm":
            out["loss"] = self.loss
        if self.balance_classes:
            out["balance_classes"] = True
        if self.shuffle_buffer_size != data.DEFAULT_SHUFFLE_BUFFER:
            out["shuffle_buffer_size"] = self.shuffle_buffer_size
        if self.effective_init_optimizer() != "fresh":
            out["init_optimizer"] = self.effective_init_optimizer()
        return out

    def effective_balance_classes(self, spec) -> bool:
        """balance_classes with 'auto' resolved for task `spec` (see the field's doc)."""
        if self.balance_classes != "auto":
            return bool(self.balance_classes)
        counts = spec.class_counts.get(self.train_split) if spec.is_classification else None
        return bool(counts) and min(counts) > 0 and max(counts) > SKEWED_RATIO * min(counts)

    def effective_init_optimizer(self) -> str:
        """'source' only where INIT_FROM is a trained prompt (file: / projected:)."""
        if self.init_optimizer != "source" or callable(self.init_from):
            return "fresh"
        return "source" if prompts.parse_init_from(self.init_from)[0] in SOURCE_SCHEMES \
            else "fresh"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["optimizer"] = self.optimizer.to_dict()
        return d


@dataclasses.dataclass
class TrainResult:
    final_prompt: np.ndarray             # [L, D]
    best_prompt: np.ndarray              # [L, D]
    best_score: float | None
    best_step: int | None
    metric: str | None
    curve: list[dict]
    steps: int
    bank_entry: str | None
    wall_time_s: float
    train_examples_per_s: float | None


# ---- pieces ------------------------------------------------------------------

def evaluation_steps(train_steps: int, eval_every: int, schedule: str = "uniform") -> set[int]:
    """The steps after which the run evaluates (step 0 is `eval_at_start`'s).

    'uniform': every multiple of eval_every, and train_steps.
    'log': the same number of evaluations n = max(1, train_steps // eval_every),
      at round(train_steps ** (k / n)) for k = 1..n (log-spaced from step 1 to
      train_steps; coinciding steps merge). E.g. 100 steps, eval_every 25:
      uniform {25, 50, 75, 100}, log {3, 10, 32, 100}.
    eval_every 0: none.
    """
    if eval_every <= 0:
        return set()
    if schedule == "log":
        n = max(1, train_steps // eval_every)
        return {int(round(train_steps ** (k / n))) for k in range(1, n + 1)} | {train_steps}
    return set(range(eval_every, train_steps + 1, eval_every)) | {train_steps}


def make_loss_fn(backbone, normalization: str = "token", loss: str = "lm"):
    """loss(prompt [L, D], params, batch) -> scalar float32 (see module docstring).

    'verbalizer' reads batch["label"] [B] and the label words' targets
    batch["candidates"], batch["candidates_mask"] [C, Lt]."""
    import jax
    import jax.numpy as jnp

    def loss_fn(prompt, params, batch):
        if loss == "verbalizer":
            scores = backbone.score_candidates(params, prompt, batch["inputs"],
                                               batch["inputs_mask"], batch["candidates"],
                                               batch["candidates_mask"])      # [B, C]
            logp = jax.nn.log_softmax(scores.astype(jnp.float32), axis=-1)
            label = jnp.asarray(batch["label"], jnp.int32)[:, None]
            return -jnp.mean(jnp.take_along_axis(logp, label, axis=-1))
        ll = backbone.target_log_likelihood(params, prompt, batch)          # [B]
        if normalization == "sequence":
            return -jnp.mean(ll)
        ntok = jnp.sum(jnp.asarray(batch["targets_mask"], jnp.float32))
        return -jnp.sum(ll) / jnp.maximum(ntok, 1.0)

    return loss_fn


def make_train_step(backbone, optimizer, normalization: str = "token", mesh=None,
                    loss: str = "lm"):
    """The jitted step `(prompt, opt_state, rng, params, batch) -> (prompt, opt_state, rng, loss)`.

    Donates prompt / opt_state / rng; params and batch are read only.
    """
    import jax
    import optax

    loss_fn = make_loss_fn(backbone, normalization, loss)

    def step(prompt, opt_state, rng, params, batch):
        # The key advances every step (reserved for stochastic steps, e.g. dropout on
        # the prompt), so checkpoints carry it and resumption stays exact.
        rng, _ = jax.random.split(rng)
        loss, grad = jax.value_and_grad(loss_fn)(prompt, params, batch)
        updates, opt_state = optimizer.update(grad, opt_state, prompt)
        prompt = optax.apply_updates(prompt, updates)
        return prompt, opt_state, rng, loss

    kwargs = {}
    if mesh is not None:
        kwargs["out_shardings"] = replicated(mesh)
    return jax.jit(step, donate_argnums=(0, 1, 2), **kwargs)


def _cached_step(backbone, optimizer_cfg: OptimizerConfig, normalization: str, mesh,
                 loss: str = "lm"):
    """One jitted step per (backbone object, optimizer settings, loss, mesh) in this
    process; the learning rate is optimizer state, so it is not part of the key."""
    key = ("train_step", compile_key(optimizer_cfg), normalization, loss,
           None if mesh is None else (tuple(mesh.shape.items()), tuple(d.id for d in mesh.devices.flat)))
    return backbone.compiled(key, lambda: make_train_step(
        backbone, make_optimizer(optimizer_cfg), normalization, mesh, loss))


def _copy_tree(tree):
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(jnp.copy, tree)


def _primary() -> bool:
    import jax

    return jax.process_index() == 0


# ---- the trainer -------------------------------------------------------------

class Trainer:
    """Runs one `TrainConfig`. `backbone` may be given (already loaded) to share it
    between runs in one process; otherwise it is loaded from `config.backbone`."""

    def __init__(self, config: TrainConfig, *, backbone=None, on_start=None):
        """`on_start(model_dir)` runs once every check has passed, when the model
        dir is about to hold this run (the CLI writes config.gin there)."""
        self.cfg = config.validate()
        self._backbone = backbone
        self._on_start = on_start

    # -- setup ----------------------------------------------------------------

    def _task_spec(self):
        return tasks.get_spec(self.cfg.task)  # unknown task -> ConfigError with close matches

    def _mesh(self):
        mesh = sharding.make_mesh(self.cfg.mesh_data, self.cfg.mesh_model)
        sharding.check_batch_divisible(self.cfg.batch_size, mesh)
        return mesh

    def _load_backbone(self, mesh):
        import jax.numpy as jnp

        if self._backbone is not None:
            # A shared backbone keeps its params; only the module's config changes.
            bb = configure_backbone(self._backbone, compute_dtype=self.cfg.compute_dtype,
                                    remat=self.cfg.remat)
            return bb, shard_params(bb.params, bb.logical_axes(), mesh)
        dtype = jnp.dtype(self.cfg.backbone_dtype) if self.cfg.backbone_dtype else None
        # The run's seed is the prompt's and the data order's, never the backbone's: a
        # preset is the same random model for every seed.
        bb = load_backbone(self.cfg.backbone, dtype=dtype, mesh=mesh,
                           compute_dtype=self.cfg.compute_dtype, remat=self.cfg.remat)
        return bb, bb.params

    def bank_run_name(self) -> str:
        """RUN_NAME as given (checked, never rewritten), else the model dir's base
        name made safe (`bank.safe_name`)."""
        if self.cfg.run_name is not None:
            return bank.check_name("run (RUN_NAME)", self.cfg.run_name)
        return bank.safe_name(os.path.basename(os.path.normpath(self.cfg.model_dir)))

    def _check_outputs(self) -> None:
        """Every name and output path check that needs no model, so that a bad one
        fails before anything is loaded or trained."""
        if self._backbone is None:
            backbones.check_backbone_spec(self.cfg.backbone)
        bank.check_name("task", self.cfg.task)
        self.bank_run_name()
        bank_dir = self.cfg.bank_dir or fileio.join(self.cfg.model_dir, "bank")
        for path, what in ((self.cfg.model_dir, "MODEL_DIR"), (bank_dir, "BANK_DIR")):
            if fileio.exists(path) and not fileio.isdir(path):
                raise ConfigError(f"{what} {path!r} exists and is not a directory; remove it "
                                  f"or choose another {what}.")

    # -- run ------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Checks everything that needs no model, takes the model dir's lock, trains."""
        t_start = time.perf_counter()
        spec = self._task_spec()
        self.cfg = cfg = dataclasses.replace(
            self.cfg, balance_classes=self.cfg.effective_balance_classes(spec))
        if cfg.loss == "verbalizer" and not spec.is_classification:
            raise ConfigError(f"loss='verbalizer' needs a classification task; {cfg.task!r} "
                              f"({spec.type}) has no label words. Use loss='lm'.")
        if cfg.balance_classes and not spec.is_classification:
            raise ConfigError(f"balance_classes needs a classification task; {cfg.task!r} "
                              f"({spec.type}) has no labels. Set BALANCE_CLASSES=False.")
        self._check_outputs()
        # The data is read once here, as `ptransfer data check` reads it, so a bad file
        # stops the run before MODEL_DIR or its checkpoint manager exists.
        validation.check_data(spec, cfg.data_dir, splits=(cfg.train_split, cfg.eval_split))
        init_desc = prompts.describe_init(cfg.init_from)
        source_moments = None
        if cfg.effective_init_optimizer() == "source":  # checked before anything is loaded
            source_moments = prompts.source_adam_moments(cfg.init_from)[:2]
        model_dir = fileio.abspath(os.path.expanduser(cfg.model_dir))
        identity = cfg.identity(init_desc)
        changeable = checkpointing.CHANGEABLE if cfg.continue_with_changes else ()
        changed = checkpointing.check_run_identity(model_dir, identity, write=False,
                                                   changeable=changeable)
        with hold_model_dir(model_dir, enabled=_primary()), contextlib.ExitStack() as cleanup:
            return self._run(t_start, spec, init_desc, model_dir, identity, cleanup,
                             source_moments, changeable, changed)

    def _run(self, t_start, spec, init_desc, model_dir, identity, cleanup,
             source_moments, changeable=(), changed=None) -> TrainResult:
        import jax
        import jax.numpy as jnp

        cfg = self.cfg
        mesh = self._mesh()
        backbone, params = self._load_backbone(mesh)
        task, mlm = data.load_task(cfg.task, backbone, cfg.data_dir)
        truncate = cfg.truncate_inputs or backbone.truncation_side
        lengths = {"inputs": cfg.input_length, "targets": cfg.target_length}
        # The training stream first: an empty or missing split stops here, before any
        # evaluation set is built or anything is compiled.
        # closed on every exit, so a data error is not followed by orbax's shutdown traceback
        ckpt = cleanup.enter_context(checkpointing.Checkpointer(model_dir, keep=cfg.keep_checkpoints))
        latest = ckpt.latest_step()
        start = min(latest or 0, cfg.train_steps)
        shard_index, num_shards = distributed.host_shard_info(mesh)
        local_bs = distributed.per_host_batch_size(cfg.batch_size, mesh)
        batches = data.iterate_batches(task, cfg.train_split, local_bs, lengths, seed=cfg.seed,
                                           start_step=start, shard_index=shard_index,
                                           num_shards=num_shards, truncate_inputs=truncate,
                                           balance_classes=cfg.balance_classes,
                                           shuffle_buffer_size=cfg.shuffle_buffer_size)
        pending = [next(batches)] if start < cfg.train_steps else []

        def next_batch():
            return pending.pop() if pending else next(batches)

        # Each host trims its own batch, so hosts of a multi-host run could disagree on
        # the length: only a single-process run trims.
        trim = jax.process_count() == 1

        eval_set = scoring.build_eval_set(task, spec, backbone, cfg.eval_split, cfg.eval_examples,
                                          lengths, truncate_inputs=truncate, mlm=mlm,
                                          subset=cfg.eval_subset)
        metric = cfg.best_metric or eval_set.primary_metric
        scorer = scoring.Scorer(backbone, params=params, mesh=mesh,
                                batch_size=cfg.eval_batch_size or cfg.batch_size)

        optimizer = make_optimizer(cfg.optimizer)  # init with this run's rate; the step reads it
        train_step = _cached_step(backbone, cfg.optimizer, cfg.loss_normalization, mesh,
                                  cfg.loss)
        rep = sharding.replicated(mesh)
        batch_keys = BATCH_KEYS
        constants = {}
        if cfg.loss == "verbalizer":  # the label words' targets, the same every step
            batch_keys = BATCH_KEYS + ("label",)
            constants = {k: jax.device_put(jnp.asarray(v), rep) for k, v in zip(
                CANDIDATE_KEYS, (eval_set.candidates, eval_set.candidates_mask))}

        # State: fresh, or restored exactly from the latest checkpoint.
        label_words = data.label_words(spec, backbone)
        if latest is None:
            prompt0 = prompts.init_prompt(cfg.init_from, backbone, cfg.prompt_length,
                                          seed=cfg.seed, label_words=label_words)
            prompt = jax.device_put(jnp.asarray(prompt0), rep)
            opt_state = optimizer.init(prompt)
            if source_moments is not None:
                opt_state = with_adam_moments(opt_state, *source_moments)
            opt_state = jax.device_put(opt_state, rep)
            rng = jax.device_put(jax.random.key_data(jax.random.PRNGKey(cfg.seed)), rep)
            best_prompt = jnp.copy(prompt)
            best_opt_state = _copy_tree(opt_state)
            step, best_score, best_step = 0, None, None
        else:
            if latest > cfg.train_steps:
                raise CheckpointError(
                    f"model dir {model_dir} holds a run already at step {latest}, beyond "
                    f"TRAIN_STEPS={cfg.train_steps}; raise TRAIN_STEPS or use a new MODEL_DIR.")
            zeros = jnp.zeros((cfg.prompt_length, backbone.d_model), jnp.float32)
            # The checkpoint holds the state of the settings it was written with.
            saved_optimizer = (make_optimizer(OptimizerConfig(**changed["optimizer"]))
                               if changed and "optimizer" in changed else optimizer)
            opt_leaves, opt_def = jax.tree_util.tree_flatten(
                jax.eval_shape(saved_optimizer.init, zeros))
            abstract = {"prompt": zeros, "best_prompt": zeros, "opt_state": opt_leaves,
                        "best_opt_state": opt_leaves,
                        "rng": jax.random.key_data(jax.random.PRNGKey(0))}
            try:
                state, meta = ckpt.restore(latest, checkpointing.abstract_like(abstract, rep))
            except CheckpointError:  # written before checkpoints kept the best optimizer state
                del abstract["best_opt_state"]
                state, meta = ckpt.restore(latest, checkpointing.abstract_like(abstract, rep))
            prompt, best_prompt, rng = state["prompt"], state["best_prompt"], state["rng"]
            opt_state = jax.tree_util.tree_unflatten(opt_def, state["opt_state"])
            best_opt_state = (jax.tree_util.tree_unflatten(opt_def, state["best_opt_state"])
                              if meta.get("best_opt_state_known") else None)
            step, best_score, best_step = int(meta["step"]), meta.get("best_score"), meta.get("best_step")
            if saved_optimizer is not optimizer:  # CONTINUE_WITH_CHANGES
                fresh = jax.device_put(optimizer.init(prompt), rep)
                opt_state = continued_state(opt_state, fresh)
                best_opt_state = (_copy_tree(continued_state(best_opt_state, fresh))
                                  if best_opt_state is not None and opt_state is not fresh
                                  else None)
                log.info("continuing %s at step %d with changed settings: %s", model_dir, step,
                         ", ".join(changed))
            log.info("resumed %s from step %d (best %s=%s at step %s)", model_dir, step, metric,
                     best_score, best_step)

        writer_on = _primary()
        if writer_on:  # everything checked: this model dir now holds this run
            checkpointing.check_run_identity(model_dir, identity, write=True,
                                             changeable=changeable, continued_at=step)
            if self._on_start is not None:
                self._on_start(model_dir)
        curve = metric_writers.JsonlCurve(fileio.join(model_dir, "metrics.jsonl"),
                                          resume_step=step) if writer_on else None
        tb = metric_writers.TensorBoard(fileio.join(model_dir, "tb"), resume_step=step) \
            if writer_on else None
        if tb is not None:  # as T5X: the config beside the curves (complete again at the end)
            tb.text("train", step, "config.gin", gin.operative_config_str())
        progress = metric_writers.Progress(cfg.train_steps, step, cfg.batch_size,
                                           desc=f"train {cfg.task}",
                                           enabled=cfg.progress and writer_on)

        def save(at_step, score=None):
            meta = {"step": at_step, "data_position": at_step, "best_score": best_score,
                    "best_step": best_step, "metric": metric, "seed": cfg.seed,
                    "best_opt_state_known": best_opt_state is not None}
            ckpt.save(at_step, {"prompt": prompt, "best_prompt": best_prompt,
                                "opt_state": jax.tree_util.tree_leaves(opt_state),
                                "best_opt_state": jax.tree_util.tree_leaves(
                                    best_opt_state if best_opt_state is not None else opt_state),
                                "rng": rng},
                      meta, score=score)

        eval_seconds = 0.0

        def evaluate(at_step, loss=None):
            nonlocal best_score, best_step, best_prompt, best_opt_state, eval_seconds
            t_eval = time.perf_counter()
            result = scorer.evaluate_full(prompt, eval_set)
            metrics = result.metrics
            cis = scoring.evaluation_intervals(result, eval_set) if writer_on else {}
            eval_seconds += time.perf_counter() - t_eval
            if metric not in metrics:
                raise ConfigError(f"best_metric {metric!r} is not among the task's metrics "
                                  f"({', '.join(metrics)}).")
            score = float(metrics[metric])
            improved = best_score is None or score > best_score
            if improved:
                best_score, best_step, best_prompt = score, at_step, jnp.copy(prompt)
                best_opt_state = _copy_tree(opt_state)
            if writer_on:
                rec = {"step": at_step, **{k: float(v) for k, v in metrics.items()}, **cis}
                if loss is not None:
                    rec["loss"] = float(loss)
                curve.append(rec)
                tb.scalars("eval", at_step, metrics)
                progress.write(f"step {at_step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            return score, improved

        setup_time = time.perf_counter() - t_start
        if step == 0 and cfg.eval_at_start and cfg.eval_every > 0 and latest is None:
            score, _ = evaluate(0)
            save(0, score)

        eval_before_loop = eval_seconds
        t_loop, step_loop = time.perf_counter(), step
        loss_value = None
        schedule = learning_rate_schedule(cfg.optimizer)
        eval_steps = evaluation_steps(cfg.train_steps, cfg.eval_every, cfg.eval_schedule)
        t_log, step_log, eval_log = t_loop, step, eval_seconds  # window of the last log line
        try:
            while step < cfg.train_steps:
                local = {k: v for k, v in next_batch().items() if k in batch_keys}
                if trim:  # padding-only columns cut to a bucket length (bounded compiles)
                    local = data.trim_to_bucket(local, cfg.length_buckets)
                batch = distributed.global_batch(local, mesh)
                batch.update(constants)
                prompt, opt_state, rng, loss = train_step(prompt, opt_state, rng, params, batch)
                step += 1
                loss_value = float(loss)
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(_nonfinite_message(
                        f"training loss became {loss_value}", step, ckpt,
                        cfg.optimizer.learning_rate))
                if not _all_finite((prompt, opt_state)):  # the update itself can overflow
                    raise NonFiniteLossError(_nonfinite_message(
                        "the prompt or optimizer state became NaN or inf after the update", step,
                        ckpt, cfg.optimizer.learning_rate))
                progress.update(step, loss_value)
                if writer_on and cfg.log_every and step % cfg.log_every == 0:
                    # T5X's names; the timing window leaves evaluation time out
                    now = time.perf_counter()
                    window = max(now - t_log - (eval_seconds - eval_log), 1e-9)
                    steps_per_s = (step - step_log) / window
                    tb.scalars("train", step, {
                        "loss": loss_value, "learning_rate": float(schedule(step - 1)),
                        "timing/steps_per_second": steps_per_s,
                        "timing/examples_per_second": steps_per_s * cfg.batch_size})
                    t_log, step_log, eval_log = now, step, eval_seconds
                score, improved = None, False
                if step in eval_steps:
                    score, improved = evaluate(step, loss_value)
                if improved or step == cfg.train_steps or \
                        (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    save(step, score)
        finally:
            progress.close()
            if tb is not None:
                tb.text("train", step, "config.gin", gin.operative_config_str())
                tb.close()
            # Closed here, not left to garbage collection: a tf.data stream finalized
            # when this frame is torn down blocked for ~50 s per run (measured).
            batches.close()
        trained_steps = step - step_loop
        loop_time = time.perf_counter() - t_loop

        final_np = scoring.to_host(prompt).astype(np.float32)
        best_np = scoring.to_host(best_prompt).astype(np.float32) if best_score is not None else final_np
        use_best = cfg.export == "best" and best_score is not None
        exported = best_np if cfg.export == "best" else final_np
        # The AdamW moments that belong with the exported prompt (a TPT run may continue
        # them); None after a resume from a checkpoint that predates them.
        moments = adam_moments(best_opt_state if use_best else opt_state)
        extras = {}
        if moments is not None and (best_opt_state is not None or not use_best):
            extras = dict(zip(bank.ADAM_MOMENTS, (scoring.to_host(m).astype(np.float32)
                                                  for m in moments)))
        # The bank keeps both prompts of the run: prompt.npy and the other one.
        if cfg.export == "best":
            extras[bank.FINAL_PROMPT] = final_np
        else:
            extras[bank.BEST_PROMPT] = best_np
        entry = None
        if writer_on:
            fileio.write_npy(fileio.join(model_dir, "prompt.npy"), final_np)
            fileio.write_npy(fileio.join(model_dir, "best_prompt.npy"), best_np)
            entry = self._write_bank(backbone, exported, init_desc, best_score, best_step, metric,
                                     curve.records, extras)
        ckpt.close()
        wall = time.perf_counter() - t_start
        loop_eval = eval_seconds - eval_before_loop
        log.info("%s: %.1fs in all: setup %.1fs, %d steps %.1fs, evaluation %.1fs, "
                 "saving and export %.1fs", cfg.task, wall, setup_time, trained_steps,
                 loop_time - loop_eval, eval_seconds,
                 wall - setup_time - loop_time - eval_before_loop)
        return TrainResult(final_prompt=final_np, best_prompt=best_np, best_score=best_score,
                           best_step=best_step, metric=metric,
                           curve=list(curve.records) if curve else [], steps=step,
                           bank_entry=entry, wall_time_s=wall,
                           train_examples_per_s=(trained_steps * cfg.batch_size / loop_time)
                           if trained_steps and loop_time > 0 else None)

    def _write_bank(self, backbone, prompt, init_desc, best_score, best_step, metric,
                    records, extras) -> str:
        cfg = self.cfg
        bank_dir = cfg.bank_dir or fileio.join(cfg.model_dir, "bank")
        run = self.bank_run_name()
        model_dir = fileio.abspath(cfg.model_dir)
        path = bank.entry_dir(bank_dir, backbone.name, cfg.task, run)
        overwrite = False
        if fileio.exists(path) and bank.is_complete(path):
            other = bank.read_entry(path)[1].get("provenance", {}).get("model_dir")
            if other != model_dir:
                raise CheckpointError(
                    f"bank entry {path} already holds run {run!r} from {other}; set "
                    "--gin.RUN_NAME to another name or remove that entry.")
            overwrite = True
        meta = {
            "init": init_desc, "steps": cfg.train_steps, "best_score": best_score,
            "best_step": best_step, "metric": metric, "seed": cfg.seed,
            "exported": cfg.export, "backbone_spec": cfg.backbone, "family": backbone.family,
            "optimizer": cfg.optimizer.to_dict(), "batch_size": cfg.batch_size,
            "eval_examples": cfg.eval_examples, "eval_split": cfg.eval_split,
            "loss": cfg.loss, "balance_classes": cfg.balance_classes,
            "init_optimizer": cfg.effective_init_optimizer(), "final_step": cfg.train_steps,
            "optimizer_state": ("adam_moments" if all(k in extras for k in bank.ADAM_MOMENTS)
                                else None),
            "provenance": {"kind": "prompt_tuning", "model_dir": model_dir},
        }
        return bank.write_entry(bank_dir, backbone.name, cfg.task, run, prompt, meta,
                                records, overwrite=overwrite, extras=extras)


LOCK_FILE = ".lock"


@contextlib.contextmanager
def hold_model_dir(model_dir: str, *, enabled: bool = True):
    """One live run per local model dir: an exclusive flock on <model_dir>/.lock
    for the run's lifetime, or one ConfigError naming the holder.

    The OS releases the lock when its process dies (even by kill -9), so a
    stale .lock of a dead run is taken over without any check; the file only
    records the holder (host, pid, start) for the message. A remote model
    dir (gs://) cannot be locked: there the rule is one job per MODEL_DIR.
    """
    if not enabled or fileio.is_remote(model_dir):
        yield
        return
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                f"model dir {model_dir} is in use by another live run ({holder}); wait for it "
                "to finish, stop it, or give this run another MODEL_DIR.") from None
        holder = (f"host {socket.gethostname()}, pid {os.getpid()}, started "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _nonfinite_message(what: str, step: int, ckpt, learning_rate: float) -> str:
    good = ckpt.latest_step()
    where = (f"The last good checkpoint is step {good} in {ckpt.directory}."
             if good is not None else "No checkpoint was saved before it.")
    start = f"step {good}" if good is not None else "the start"
    return (f"{what} at step {step}; stopped without saving that state. {where} Training is "
            "deterministic, so rerunning the same command diverges again. To continue from "
            f"{start} with a lower learning rate, rerun the same command with "
            f"--gin.CONTINUE_WITH_CHANGES=True --gin.LEARNING_RATE={learning_rate / 10:.3g} "
            "(run_identity.json records the change; --gin.CLIP_NORM=1.0 adds gradient "
            "clipping the same way), or start a new MODEL_DIR, or check the prompt "
            "initialization (INIT_FROM).")


@functools.lru_cache(maxsize=None)
def _finite_fn():
    import jax
    import jax.numpy as jnp

    return jax.jit(lambda leaves: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])))


def _all_finite(tree) -> bool:
    """True when every float leaf of `tree` is finite (one small jitted reduction)."""
    import jax
    import jax.numpy as jnp

    leaves = [x for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return bool(_finite_fn()(leaves)) if leaves else True


def build_train_config() -> TrainConfig:
    """The gin-configured TrainConfig (gin must be parsed), or one ConfigError."""
    return build_configurable(TrainConfig, "TrainConfig")


@gin.configurable(module="ptransfer")
def train(config: TrainConfig | None = None, backbone=None) -> TrainResult:
    """Runs the gin-configured `TrainConfig` (or the one given)."""
    return Trainer(config or TrainConfig(), backbone=backbone).run()
