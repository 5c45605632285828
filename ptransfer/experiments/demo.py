"""The demo experiment: the paper's three findings on one backbone, end to end.

Stages (each writes its JSON atomically and is skipped on a re-run when its
inputs are unchanged, so an interrupted demo resumes where it stopped; an
unfinished training run resumes from its last checkpoint):

  1. bank        prompt-tune every training task for every seed
  2. matrix      zero-shot cross-task transfer (+ no-prompt / random baselines)
  3. tpt         transfer as initialization on the configured pairs, speedups
  4. indicators  E/C similarities and ON, Spearman vs the measured transfer
  5. report      REPORT.md and PNGs drawn from the JSON above

Everything is configured by gin (`gin_configs/experiments/demo*.gin`): the
base `ptransfer.TrainConfig` (backbone, steps, lengths, optimizer) and
`ptransfer.DemoConfig` below.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Sequence

import gin

import tasks as task_registry
from ptransfer.backbones import configure_backbone, load_backbone, resolve_backbone_spec
from ptransfer.bank import store as bank
from ptransfer.core.errors import ConfigError
from ptransfer.core.fileio import write_json as _write_json
from ptransfer.experiments.indicators import compute_indicators
from ptransfer.experiments.matrix import cross_task_matrix
from ptransfer.experiments.tpt import run_pair
from ptransfer.report.markdown import write_report
from ptransfer.training.trainer import Trainer, build_train_config

log = logging.getLogger(__name__)


@gin.configurable(module="ptransfer")
@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """What the demo runs (gin: `ptransfer.DemoConfig.<field>`).

    out_dir:             results, bank, runs and REPORT.md
    train_tasks:         tasks prompt-tuned into the bank (sources of the matrix)
    eval_only_tasks:     extra matrix targets without their own prompt (e.g. rt)
    seeds:               seeds of every bank run
    tpt_pairs:           "source->target" pairs for transfer as initialization
    tpt_seeds:           seeds of the TPT runs (None: `seeds`)
    metric:              metric of the matrix, curves and speedups (None: each
                         task's primary metric)
    matrix_split:        split of the zero-shot matrix (a task lacking it uses
                         'validation'); the bank's best prompts are chosen on
                         the validation subset, so 'test' keeps the matrix honest
    matrix_eval_examples: examples per target in the matrix
    stimulus:            ON stimulus: 'dummy' or 'task:<name>'
    window_size:         layers per ON window
    """

    out_dir: str = "demo_out"
    train_tasks: Sequence[str] = ("mr", "tweets", "amazon", "nyt", "sms_spam", "trec")
    eval_only_tasks: Sequence[str] = ("rt",)
    seeds: Sequence[int] = (0,)
    tpt_pairs: Sequence[str] = ("mr->tweets", "amazon->nyt", "trec->mr")
    tpt_seeds: Sequence[int] | None = None
    metric: str | None = "balanced_accuracy"
    matrix_split: str = "test"
    matrix_eval_examples: int | None = 200
    matrix_batch_size: int = 32
    stimulus: str = "dummy"
    window_size: int = 3

    def pairs(self) -> list[tuple[str, str]]:
        out = []
        for p in self.tpt_pairs:
            src, sep, tgt = p.partition("->")
            if not sep or src not in self.train_tasks or tgt not in self.train_tasks:
                raise ConfigError(f"tpt pair {p!r} must be 'source->target' with both among "
                                  f"train_tasks ({', '.join(self.train_tasks)}).")
            out.append((src.strip(), tgt.strip()))
        return out


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _reusable(path: str, fingerprint: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return data if data.get("fingerprint") == fingerprint else None


class Stages:
    """Prints which stage runs, with elapsed time (the trainer adds step bars)."""

    NAMES = ("bank", "matrix", "tpt", "indicators", "report")

    def __init__(self):
        self.t0 = time.perf_counter()

    def start(self, name: str, what: str) -> None:
        i = self.NAMES.index(name) + 1
        log.info("[stage %d/%d %s | %.0fs] %s", i, len(self.NAMES), name,
                 time.perf_counter() - self.t0, what)


def run_demo(demo: DemoConfig | None = None, base=None) -> str:
    """Runs all stages; returns the path of REPORT.md."""
    demo = demo or DemoConfig()
    base = base or build_train_config()
    out = os.path.abspath(demo.out_dir)
    bank_dir = os.path.join(out, "bank")
    os.makedirs(bank_dir, exist_ok=True)
    stages = Stages()
    timings = {}
    for t in list(demo.train_tasks) + list(demo.eval_only_tasks):
        task_registry.get_spec(t)  # unknown names fail before anything is loaded
    pairs = demo.pairs()

    t = time.perf_counter()
    # Every stage (bank, matrix, TPT, indicators) runs the same variant: the base run's
    # compute dtype (e.g. bf16 matmuls, weights stored once in bf16) and remat.
    backbone = configure_backbone(load_backbone(resolve_backbone_spec(base.backbone)),
                                  compute_dtype=base.compute_dtype, remat=base.remat)
    timings["load_backbone_s"] = time.perf_counter() - t
    base = dataclasses.replace(base, bank_dir=bank_dir, best_metric=demo.metric or base.best_metric)

    def run_dir(task: str, seed: int) -> str:
        return os.path.join(out, "runs", task, f"seed{seed}")

    # 1. the bank
    t = time.perf_counter()
    jobs = [(task, seed) for task in demo.train_tasks for seed in demo.seeds]
    for k, (task, seed) in enumerate(jobs):
        entry = bank.entry_dir(bank_dir, backbone.name, task, f"seed{seed}")
        if bank.is_complete(entry):
            stages.start("bank", f"{task} seed {seed}: bank entry exists, reused ({k + 1}/{len(jobs)})")
            continue
        stages.start("bank", f"prompt tuning {task} seed {seed} ({k + 1}/{len(jobs)})")
        cfg = dataclasses.replace(base, task=task, seed=seed, model_dir=run_dir(task, seed),
                                  run_name=f"seed{seed}")
        Trainer(cfg, backbone=backbone).run()
    timings["bank_s"] = time.perf_counter() - t
    entries = bank.list_entries(bank_dir, backbone=backbone.name, require=True)
    bank_refs = sorted((e.ref, e.meta.get("created")) for e in entries)

    # 2. the zero-shot matrix
    t = time.perf_counter()
    targets = list(demo.train_tasks) + list(demo.eval_only_tasks)
    matrix_args = dict(targets=targets, sources=list(demo.train_tasks), split=demo.matrix_split,
                       eval_examples=demo.matrix_eval_examples, input_length=base.input_length,
                       target_length=base.target_length, batch_size=demo.matrix_batch_size,
                       seed=0, metric_name=demo.metric)
    fp = _fingerprint([matrix_args, bank_refs])
    matrix_path = os.path.join(out, "cross_task.json")
    cross = _reusable(matrix_path, fp)
    if cross is None:
        stages.start("matrix", f"{len(entries)} prompts (+2 baselines) x {len(targets)} targets")
        cross = cross_task_matrix(
            backbone, bank_dir, data_dir=base.data_dir,
            progress=lambda i, n, name: stages.start("matrix", f"target {i}/{n} ({name}) done"),
            **matrix_args)
        cross["fingerprint"] = fp
        _write_json(matrix_path, cross)
    else:
        stages.start("matrix", "cross_task.json is up to date, reused")
    timings["matrix_s"] = time.perf_counter() - t

    # 3. transfer as initialization
    t = time.perf_counter()
    tpt_seeds = list(demo.tpt_seeds if demo.tpt_seeds is not None else demo.seeds)
    tpt_base = dataclasses.replace(base, bank_dir=os.path.join(out, "tpt_bank"))
    fp_tpt = _fingerprint([pairs, tpt_seeds, base.to_json(), bank_refs])
    tpt_path = os.path.join(out, "tpt.json")
    tpt = _reusable(tpt_path, fp_tpt)
    if tpt is None:
        results = []
        for k, (src, tgt) in enumerate(pairs):
            stages.start("tpt", f"{src} -> {tgt} ({k + 1}/{len(pairs)}), seeds {tpt_seeds}")
            src_entry = bank.find_entry(bank_dir, backbone.name, src, f"seed{tpt_seeds[0]}")
            results.append(run_pair(tpt_base, src_entry.path, src, tgt, tpt_seeds,
                                    os.path.join(out, "tpt_runs"), backbone=backbone,
                                    pt_model_dir=run_dir))
        tpt = {"backbone": backbone.name, "pairs": results, "fingerprint": fp_tpt}
        _write_json(tpt_path, tpt)
    else:
        stages.start("tpt", "tpt.json is up to date, reused")
    timings["tpt_s"] = time.perf_counter() - t

    # 4. indicators
    t = time.perf_counter()
    fp_ind = _fingerprint([cross["fingerprint"], demo.stimulus, demo.window_size])
    ind_path = os.path.join(out, "indicators.json")
    if _reusable(ind_path, fp_ind) is None:
        stages.start("indicators", f"E/C and ON on {len(demo.train_tasks)} tasks "
                                   f"(stimulus {demo.stimulus})")
        ind = compute_indicators(backbone, bank_dir, cross, stimulus=demo.stimulus,
                                 window_size=demo.window_size, data_dir=base.data_dir)
        ind["fingerprint"] = fp_ind
        _write_json(ind_path, ind)
    else:
        stages.start("indicators", "indicators.json is up to date, reused")
    timings["indicators_s"] = time.perf_counter() - t

    # 5. report
    stages.start("report", "drawing plots and REPORT.md from the JSON")
    info_path = os.path.join(out, "run_info.json")
    if os.path.exists(info_path):  # a reused stage keeps the time it took when it ran
        with open(info_path) as f:
            earlier = json.load(f).get("stage times (s)", {})
        for stage, seconds in earlier.items():
            if timings.get(stage, 0.0) < 1.0 <= seconds:
                timings[stage] = seconds
    info = _run_info(demo, base, backbone, entries, timings)
    _write_json(os.path.join(out, "run_info.json"), info)
    path = write_report(out)
    log.info("report written: %s (%.0fs in all)", path, time.perf_counter() - stages.t0)
    return path


def _run_info(demo: DemoConfig, base, backbone, entries, timings) -> dict:
    sizes = {}
    for t in list(demo.train_tasks) + list(demo.eval_only_tasks):
        spec = task_registry.get_spec(t)
        sizes[t] = dict(spec.sizes)
    return {
        "backbone": backbone.name,
        "backbone_spec": base.backbone,
        "seeds": list(demo.seeds),
        "train_steps": base.train_steps,
        "batch_size": base.batch_size,
        "prompt_length": base.prompt_length,
        "init": base.init_from,
        "optimizer": f"{base.optimizer.name} lr={base.optimizer.learning_rate}",
        "eval_every": base.eval_every,
        "eval_examples (validation subset)": f"{base.eval_examples} ({base.eval_subset})",
        "compute dtype": base.compute_dtype or "float32",
        "loss": base.loss,
        "class-balanced sampling": base.balance_classes,
        "TPT optimizer state": base.init_optimizer,
        "matrix split / examples": f"{demo.matrix_split} / {demo.matrix_eval_examples}",
        "metric": demo.metric,
        "dataset sizes": sizes,
        "bank entries": len(entries),
        "stage times (s)": {k: round(v, 1) for k, v in timings.items()},
    }
