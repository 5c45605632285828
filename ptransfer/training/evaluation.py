"""`ptransfer eval`: score one prompt (or none) on a task split with the task's metrics.

The result (returned, printed, and written to `output` when set) is
{task, split, backbone, prompt, examples, metrics, intervals, seconds}; for a
classification task `intervals` holds accuracy_ci (Wilson) and
balanced_accuracy_ci (seeded bootstrap over the examples), the 95% intervals
of `scoring.evaluation_intervals`, with how they were computed. With
`predictions` set, every example's result goes to that JSON-lines file
(`scoring.prediction_rows`: index in the split, label, prediction, the label
words' log-likelihoods), written atomically, so intervals and paired
comparisons of prompts can be recomputed from it.
"""

from __future__ import annotations

import dataclasses
import os
import time

import gin
import numpy as np

import tasks
from ptransfer import data, prompts, scoring
from ptransfer.backbones import load_backbone, resolve_backbone_spec
from ptransfer.core import fileio, intervals, sharding
from ptransfer.core.configurable import build_configurable
from ptransfer.core.errors import ConfigError
from ptransfer.data import default_truncation, load_task


@gin.configurable(module="ptransfer")
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One evaluation (gin: runs/prompt_eval.gin).

    prompt: None (no prompt), a path (.npy, bank entry, PEFT adapter dir), or
      any INIT_FROM spec ('random', 'vocab', 'file:...', 'projected:...'); a
      generated baseline uses `prompt_length` and `seed`.
    output: also write the result JSON here.
    predictions: also write one JSON line per evaluation example here (.jsonl).
    """

    backbone: str
    task: str
    prompt: str | None
    prompt_length: int = 100
    split: str = "validation"
    eval_examples: int | None = None
    eval_subset: str = "stratified"   # or 'first'; see scoring.build_eval_set
    batch_size: int = 32
    input_length: int = 128
    target_length: int = 16
    truncate_inputs: str | None = None
    seed: int = 0
    backbone_dtype: str | None = None
    mesh_data: int = -1
    mesh_model: int = 1
    data_dir: str | None = None
    output: str | None = None
    predictions: str | None = None


INTERVAL_SEED = 0  # the bootstrap's seed: the same predictions give the same interval


def build_eval_config() -> EvalConfig:
    return build_configurable(EvalConfig, "EvalConfig")


def resolve_prompt(spec: str | None, backbone, prompt_length: int, seed: int = 0,
                   label_words=()) -> np.ndarray | None:
    """A prompt float32 [L, D] for `spec` (see EvalConfig.prompt), or None."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none")):
        return None
    scheme, arg = prompts.parse_init_from(spec)
    if scheme in ("file", "projected") and arg:
        length = np.shape(prompts.load_prompt_file(arg)[0])[0]
    else:
        length = prompt_length
    return prompts.init_prompt(spec, backbone, length, seed=seed, label_words=label_words)


def run_eval(cfg: EvalConfig, *, backbone=None) -> dict:
    """Evaluates and returns {task, split, backbone, prompt, examples, metrics, intervals,
    seconds} (see the module docstring)."""
    import jax.numpy as jnp

    if cfg.batch_size <= 0 or cfg.input_length <= 0 or cfg.target_length <= 0:
        raise ConfigError("batch_size, input_length and target_length must be positive.")
    t0 = time.perf_counter()
    spec = tasks.get_spec(cfg.task)
    mesh = sharding.make_mesh(cfg.mesh_data, cfg.mesh_model)
    if backbone is None:
        dtype = jnp.dtype(cfg.backbone_dtype) if cfg.backbone_dtype else None
        backbone = load_backbone(resolve_backbone_spec(cfg.backbone), dtype=dtype, mesh=mesh)
        params = backbone.params
    else:
        params = sharding.shard_params(backbone.params, backbone.logical_axes(), mesh)
    prompt = resolve_prompt(cfg.prompt, backbone, cfg.prompt_length, cfg.seed,
                            label_words=data.label_words(spec, backbone))
    task, mlm = load_task(cfg.task, backbone, cfg.data_dir)
    lengths = {"inputs": cfg.input_length, "targets": cfg.target_length}
    eval_set = scoring.build_eval_set(task, spec, backbone, cfg.split, cfg.eval_examples, lengths,
                                      truncate_inputs=cfg.truncate_inputs or default_truncation(backbone),
                                      mlm=mlm, subset=cfg.eval_subset)
    scorer = scoring.Scorer(backbone, params=params, batch_size=cfg.batch_size, mesh=mesh)
    evaluation = scorer.evaluate_full(prompt, eval_set)
    cis = scoring.evaluation_intervals(evaluation, eval_set, seed=INTERVAL_SEED)
    if cis:
        cis = {**cis, "confidence": intervals.CONFIDENCE, "resamples": intervals.RESAMPLES,
               "seed": INTERVAL_SEED, "method": "accuracy: Wilson; balanced accuracy: "
                                                "percentile bootstrap over the examples"}
    result = {"task": cfg.task, "split": cfg.split, "backbone": backbone.name,
              "prompt": cfg.prompt, "examples": eval_set.size, "metrics": evaluation.metrics,
              "intervals": cis, "seconds": round(time.perf_counter() - t0, 3)}
    if cfg.predictions:
        _make_parent(cfg.predictions)
        scoring.write_predictions(cfg.predictions, evaluation, eval_set)
        result["predictions"] = cfg.predictions
    if cfg.output:
        _make_parent(cfg.output)
        fileio.write_json(cfg.output, result, sort_keys=True)
    return result


def _make_parent(path: str) -> None:
    if not fileio.is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
