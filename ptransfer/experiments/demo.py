"""The demo experiment: the paper's findings on one or two backbones, end to end.

Stages, per backbone (each writes its JSON atomically and is skipped on a re-run
when its inputs are unchanged, so an interrupted demo resumes where it stopped;
an unfinished training run resumes from its last checkpoint):

  1. bank         prompt-tune every training task for every seed
  2. matrix       zero-shot cross-task transfer (+ no-prompt / random baselines)
  3. tpt          transfer as initialization on the configured pairs, speedups
  4. indicators   E/C similarities and ON, Spearman vs the measured transfer

then, with two backbones and `cross_model_tasks`:

  5. cross_model  every mapper in both directions, zero-shot, and TPT_MODEL
                  from the best mapper (`experiments.cross_model`)
  6. report       REPORT.md and PNGs drawn from the JSON above

Layout of `out_dir`: `bank/` (one bank, entries keyed by backbone), and per
backbone `models/<backbone>/{cross_task,tpt,indicators}.json` with its runs,
`cross_model/cross_model.json`, `run_info.json`, `REPORT.md`.

Everything is configured by gin (`gin_configs/experiments/demo*.gin`): the
base `ptransfer.TrainConfig` (steps, lengths, optimizer; its backbone is the
one used when `DemoConfig.backbones` is empty) and `ptransfer.DemoConfig`.
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
from ptransfer import scoring
from ptransfer.backbones import configure_backbone, load_backbone, resolve_backbone_spec
from ptransfer.bank import store as bank
from ptransfer.core import sharding
from ptransfer.core.errors import ConfigError
from ptransfer.core.fileio import write_json as _write_json
from ptransfer.experiments.cross_model import MAPPER_NAMES, CrossModelConfig, run_cross_model
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
    backbones:           backbone specs, each run through stages 1-4 (empty: the
                         base TrainConfig's backbone)
    train_tasks:         tasks prompt-tuned into the bank (sources of the matrix)
    eval_only_tasks:     extra matrix targets without their own prompt (e.g. rt)
    seeds:               seeds of every bank run
    learning_rates:      one learning rate per backbone, in `backbones` order, for
                         its PT and TPT runs alike (None: the base run's for all)
    tpt_pairs:           "source->target" pairs for transfer as initialization
    tpt_seeds:           seeds of the TPT runs (None: `seeds`)
    metric:              metric of the matrix, curves and speedups (None: each
                         task's primary metric)
    matrix_split:        split of the zero-shot matrix (a task lacking it uses
                         'validation'); the bank's best prompts are chosen on
                         the validation subset, so 'test' keeps the matrix honest
    matrix_eval_examples: examples per target in the matrix
    matrix_batch_size:   examples per scoring call of the matrix and cross-model stages
    matrix_prompts_per_call: prompts one scoring call evaluates at once (vmapped);
                         1 reuses the trainer's compiled scorer (speed only)
    stimulus:            ON stimulus: 'dummy' or 'task:<name>'
    window_size:         layers per ON window
    indicator_prompt:    which prompt of each bank entry the indicators compare:
                         'final' (all taken at the same step) or 'best'
    cross_model_tasks:   tasks whose prompts are mapped between the first two
                         backbones (both directions); empty: no cross-model stage
    cross_model_train_tasks: the projector's prompt-pair tasks (the paper trains
                         it on some tasks and evaluates it on the others)
    cross_model_mappers: mapper names (`experiments.cross_model.MAPPER_NAMES`)
    cross_model_eval_examples: examples per target task (None: matrix_eval_examples)
    cross_model_tpt_tasks: TPT_MODEL target tasks (from the best mapper; vanilla PT
                         is the target backbone's bank run, so only TPT trains)
    cross_model_settings: other `CrossModelConfig` fields (e.g. relative_steps)
    """

    out_dir: str = "demo_out"
    backbones: Sequence[str] = ()
    train_tasks: Sequence[str] = ("mr", "tweets", "amazon", "sms_spam", "trec")
    eval_only_tasks: Sequence[str] = ("rt",)
    seeds: Sequence[int] = (0,)
    learning_rates: Sequence[float] | None = None
    tpt_pairs: Sequence[str] = ("mr->tweets", "trec->mr")
    tpt_seeds: Sequence[int] | None = None
    metric: str | None = "balanced_accuracy"
    matrix_split: str = "test"
    matrix_eval_examples: int | None = 200
    matrix_batch_size: int = 32
    matrix_prompts_per_call: int = 4
    stimulus: str = "dummy"
    window_size: int = 3
    indicator_prompt: str = "final"
    cross_model_tasks: Sequence[str] = ()
    cross_model_train_tasks: Sequence[str] = ()
    cross_model_mappers: Sequence[str] = MAPPER_NAMES
    cross_model_eval_examples: int | None = None
    cross_model_tpt_tasks: Sequence[str] = ()
    cross_model_settings: dict = dataclasses.field(default_factory=dict)

    def pairs(self) -> list[tuple[str, str]]:
        out = []
        for p in self.tpt_pairs:
            src, sep, tgt = p.partition("->")
            if not sep or src not in self.train_tasks or tgt not in self.train_tasks:
                raise ConfigError(f"tpt pair {p!r} must be 'source->target' with both among "
                                  f"train_tasks ({', '.join(self.train_tasks)}).")
            out.append((src.strip(), tgt.strip()))
        return out

    def cross_model_config(self, base) -> CrossModelConfig | None:
        """The cross-model stage's config (None: no stage), checked before any model loads.
        Its TPT_MODEL runs copy the base run (`run_cross_model(base=...)`)."""
        if not self.cross_model_tasks:
            return None
        if len(self.backbones) != 2:
            raise ConfigError(f"the cross-model stage maps between two backbones; "
                              f"DemoConfig.backbones has {len(self.backbones)}. Give two specs "
                              "or set cross_model_tasks = [].")
        outside = [t for t in list(self.cross_model_tasks) + list(self.cross_model_train_tasks)
                   if t not in self.train_tasks]
        if outside:
            raise ConfigError(f"cross-model task(s) {', '.join(outside)} are not among "
                              f"train_tasks ({', '.join(self.train_tasks)}): the bank holds "
                              "prompts of the train tasks only.")
        known = {f.name for f in dataclasses.fields(CrossModelConfig)}
        unknown = sorted(set(self.cross_model_settings) - known)
        if unknown:
            raise ConfigError(f"DemoConfig.cross_model_settings: unknown field(s) "
                              f"{', '.join(unknown)}; CrossModelConfig has {', '.join(sorted(known))}.")
        examples = (self.cross_model_eval_examples if self.cross_model_eval_examples is not None
                    else self.matrix_eval_examples)
        return CrossModelConfig(
            tasks=tuple(self.cross_model_tasks), train_tasks=tuple(self.cross_model_train_tasks),
            mappers=tuple(self.cross_model_mappers), both_directions=True,
            split=self.matrix_split, eval_examples=examples, input_length=base.input_length,
            target_length=base.target_length, batch_size=self.matrix_batch_size,
            prompts_per_call=self.matrix_prompts_per_call,
            metric=self.metric, data_dir=base.data_dir,
            tpt_steps=base.train_steps if self.cross_model_tpt_tasks else 0,
            tpt_tasks=tuple(self.cross_model_tpt_tasks),
            tpt_seeds=tuple(self.tpt_seeds if self.tpt_seeds is not None else self.seeds),
            **dict(self.cross_model_settings))


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _reusable(path: str, fingerprint: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return data if data.get("fingerprint") == fingerprint else None


class Stages:
    """Logs which stage runs, for which model, with its number, the elapsed time and
    an ETA (the trainer adds step bars with their own ETA). Models are numbered in the
    order they first appear. The ETA prices each stage still to come at what the same
    stage took on an earlier model, else at the mean of the stages done so far."""

    PER_MODEL = ("bank", "matrix", "tpt", "indicators")

    def __init__(self, num_models: int, cross_model: bool):
        self.t0 = time.perf_counter()
        self.plan = [(k, s) for k in range(num_models) for s in self.PER_MODEL]
        self.plan += [(None, "cross_model")] if cross_model else []
        self.plan += [(None, "report")]
        self.models: list[str] = []
        self.took: dict[tuple, float] = {}
        self._current: tuple | None = None
        self._since = self.t0

    def start(self, name: str, what: str, model: str | None = None) -> None:
        if model is not None and model not in self.models:
            self.models.append(model)
        key = (None if model is None else self.models.index(model), name)
        now = time.perf_counter()
        if key != self._current:
            if self._current is not None:
                self.took[self._current] = now - self._since
            self._current, self._since = key, now
        i = self.plan.index(key)
        log.info("[stage %d/%d %s%s | %.0fs%s] %s", i + 1, len(self.plan), name,
                 f" {model}" if model else "", now - self.t0, self._eta(i, now), what)

    def _eta(self, i: int, now: float) -> str:
        if not self.took:
            return ""
        mean_s = sum(self.took.values()) / len(self.took)
        by_name = {s: t for (_, s), t in self.took.items()}
        left = sum(by_name.get(s, mean_s) for _, s in self.plan[i + 1:])
        left += max(0.0, by_name.get(self.plan[i][1], mean_s) - (now - self._since))
        return f", ETA {left / 60:.0f} min"


def _learning_rates(demo: DemoConfig, specs: Sequence[str], base) -> dict[str, float]:
    """{backbone spec: its learning rate}; one ConfigError when the list does not fit."""
    if demo.learning_rates is None:
        return {s: base.optimizer.learning_rate for s in specs}
    lrs = [float(x) for x in demo.learning_rates]
    if len(lrs) != len(specs) or not all(x > 0 for x in lrs):
        raise ConfigError(f"DemoConfig.learning_rates {list(demo.learning_rates)} must give one "
                          f"positive learning rate per backbone ({len(specs)}: {specs}), or be None.")
    return dict(zip(specs, lrs))


def run_demo(demo: DemoConfig | None = None, base=None) -> str:
    """Runs all stages; returns the path of REPORT.md."""
    demo = demo or DemoConfig()
    base = base or build_train_config()
    out = os.path.abspath(demo.out_dir)
    bank_dir = os.path.join(out, "bank")
    for t in list(demo.train_tasks) + list(demo.eval_only_tasks):
        task_registry.get_spec(t)  # unknown names fail before anything is loaded
    demo.pairs()
    if demo.indicator_prompt not in ("final", "best"):
        raise ConfigError(f"DemoConfig.indicator_prompt {demo.indicator_prompt!r}: use 'final' "
                          "(every prompt taken at the last step) or 'best'.")
    cross_cfg = demo.cross_model_config(base)
    specs = list(demo.backbones) or [base.backbone]
    if len(set(specs)) != len(specs):
        raise ConfigError(f"DemoConfig.backbones lists a spec twice: {specs}.")
    lrs = _learning_rates(demo, specs, base)
    base = dataclasses.replace(base, bank_dir=bank_dir, best_metric=demo.metric or base.best_metric)
    os.makedirs(bank_dir, exist_ok=True)

    with scoring.reusing_eval_sets():  # every stage evaluates on the same subsets
        return _run_stages(demo, base, specs, lrs, cross_cfg, out)


def _run_stages(demo: DemoConfig, base, specs, lrs, cross_cfg, out: str) -> str:
    timings: dict[str, float] = {}
    models: dict[str, dict] = {}
    loaded = []
    stages = Stages(len(specs), cross_cfg is not None)
    # Every stage runs the base run's compute dtype (e.g. bf16 matmuls, weights stored
    # once in bf16) and remat, on the params placed once on the base run's mesh: the
    # training runs' scorer executables then serve every later stage.
    mesh = sharding.make_mesh(base.mesh_data, base.mesh_model)
    for spec in specs:
        t = time.perf_counter()
        backbone = configure_backbone(load_backbone(resolve_backbone_spec(spec), mesh=mesh),
                                      compute_dtype=base.compute_dtype, remat=base.remat)
        timings[f"{backbone.name}/load_backbone_s"] = time.perf_counter() - t
        mbase = dataclasses.replace(base, backbone=spec, optimizer=dataclasses.replace(
            base.optimizer, learning_rate=lrs[spec]))
        models[backbone.name] = _run_backbone(demo, mbase, backbone, out, stages, timings)
        loaded.append((spec, backbone, mbase))

    if cross_cfg is not None:
        t = time.perf_counter()
        (spec_a, a, _), (spec_b, b, _) = loaded
        stages.start("cross_model", f"{len(cross_cfg.mappers)} mappers x "
                     f"{len(cross_cfg.tasks)} tasks, {a.name} <-> {b.name}")
        # TPT_MODEL on each target copies that target's own base run (its learning rate)
        tpt_bank = os.path.join(out, "tpt_bank")
        run_cross_model(base.bank_dir, a, b, cross_cfg, os.path.join(out, "cross_model"),
                        specs={a.name: spec_a, b.name: spec_b},
                        base={m.name: dataclasses.replace(mb, bank_dir=tpt_bank)
                              for _, m, mb in loaded},
                        pt_model_dir=lambda name, task, seed: _run_dir(out, name, task, seed))
        timings["cross_model_s"] = time.perf_counter() - t

    stages.start("report", "drawing plots and REPORT.md from the JSON")
    info_path = os.path.join(out, "run_info.json")
    if os.path.exists(info_path):  # a reused stage keeps the time it took when it ran
        with open(info_path) as f:
            earlier = json.load(f).get("stage times (s)", {})
        for stage, seconds in earlier.items():
            if timings.get(stage, 0.0) < 1.0 <= seconds:
                timings[stage] = seconds
    _write_json(info_path, _run_info(demo, base, models, cross_cfg, timings))
    path = write_report(out)
    log.info("report written: %s (%.0fs in all)", path, time.perf_counter() - stages.t0)
    return path


def model_dir_of(out: str, backbone_name: str) -> str:
    """Where one backbone's stage JSON and runs live."""
    return os.path.join(out, "models", backbone_name)


def _run_dir(out: str, backbone_name: str, task: str, seed: int) -> str:
    return os.path.join(model_dir_of(out, backbone_name), "runs", task, f"seed{seed}")


def _run_backbone(demo: DemoConfig, base, backbone, out: str, stages: Stages,
                  timings: dict[str, float]) -> dict:
    """Stages 1-4 on one backbone into `models/<name>/`; returns its run-info part."""
    name = backbone.name
    bank_dir = base.bank_dir
    mdir = model_dir_of(out, name)
    os.makedirs(mdir, exist_ok=True)
    run_dir = lambda task, seed: _run_dir(out, name, task, seed)  # noqa: E731

    # 1. the bank
    t = time.perf_counter()
    jobs = [(task, seed) for task in demo.train_tasks for seed in demo.seeds]
    for k, (task, seed) in enumerate(jobs):
        entry = bank.entry_dir(bank_dir, name, task, f"seed{seed}")
        if bank.is_complete(entry):
            stages.start("bank", f"{task} seed {seed}: bank entry exists, reused "
                                 f"({k + 1}/{len(jobs)})", name)
            continue
        stages.start("bank", f"prompt tuning {task} seed {seed} ({k + 1}/{len(jobs)})", name)
        cfg = dataclasses.replace(base, task=task, seed=seed, model_dir=run_dir(task, seed),
                                  run_name=f"seed{seed}")
        Trainer(cfg, backbone=backbone).run()
    timings[f"{name}/bank_s"] = time.perf_counter() - t
    entries = bank.list_entries(bank_dir, backbone=name, require=True)
    bank_refs = sorted((e.ref, e.meta.get("created")) for e in entries)

    # 2. the zero-shot matrix
    t = time.perf_counter()
    targets = list(demo.train_tasks) + list(demo.eval_only_tasks)
    matrix_args = dict(targets=targets, sources=list(demo.train_tasks), split=demo.matrix_split,
                       eval_examples=demo.matrix_eval_examples, input_length=base.input_length,
                       target_length=base.target_length, batch_size=demo.matrix_batch_size,
                       seed=0, metric_name=demo.metric)
    fp = _fingerprint([matrix_args, bank_refs])
    matrix_path = os.path.join(mdir, "cross_task.json")
    cross = _reusable(matrix_path, fp)
    if cross is None:
        stages.start("matrix", f"{len(entries)} prompts (+2 baselines) x {len(targets)} "
                               "targets", name)
        cross = cross_task_matrix(
            backbone, bank_dir, data_dir=base.data_dir, prompts_per_call=demo.matrix_prompts_per_call,
            progress=lambda i, n, task: stages.start("matrix", f"target {i}/{n} ({task}) done",
                                                     name),
            **matrix_args)
        cross["fingerprint"] = fp
        _write_json(matrix_path, cross)
    else:
        stages.start("matrix", "cross_task.json is up to date, reused", name)
    timings[f"{name}/matrix_s"] = time.perf_counter() - t

    # 3. transfer as initialization
    t = time.perf_counter()
    pairs = demo.pairs()
    tpt_seeds = list(demo.tpt_seeds if demo.tpt_seeds is not None else demo.seeds)
    tpt_base = dataclasses.replace(base, bank_dir=os.path.join(out, "tpt_bank"))
    fp_tpt = _fingerprint([pairs, tpt_seeds, base.to_json(), bank_refs])
    tpt_path = os.path.join(mdir, "tpt.json")
    tpt = _reusable(tpt_path, fp_tpt)
    if tpt is None:
        results = []
        for k, (src, tgt) in enumerate(pairs):
            stages.start("tpt", f"{src} -> {tgt} ({k + 1}/{len(pairs)}), seeds {tpt_seeds}", name)
            src_entry = bank.find_entry(bank_dir, name, src, f"seed{tpt_seeds[0]}")
            results.append(run_pair(tpt_base, src_entry.path, src, tgt, tpt_seeds,
                                    os.path.join(mdir, "tpt_runs"), backbone=backbone,
                                    pt_model_dir=run_dir))
        tpt = {"backbone": name, "pairs": results, "fingerprint": fp_tpt}
        _write_json(tpt_path, tpt)
    else:
        stages.start("tpt", "tpt.json is up to date, reused", name)
    timings[f"{name}/tpt_s"] = time.perf_counter() - t

    # 4. indicators
    t = time.perf_counter()
    fp_ind = _fingerprint([cross["fingerprint"], demo.stimulus, demo.window_size,
                           demo.indicator_prompt])
    ind_path = os.path.join(mdir, "indicators.json")
    if _reusable(ind_path, fp_ind) is None:
        stages.start("indicators", f"E/C and ON on {len(demo.train_tasks)} tasks "
                                   f"(stimulus {demo.stimulus})", name)
        ind = compute_indicators(backbone, bank_dir, cross, stimulus=demo.stimulus,
                                 window_size=demo.window_size, data_dir=base.data_dir,
                                 prompt_kind=demo.indicator_prompt)
        ind["fingerprint"] = fp_ind
        _write_json(ind_path, ind)
    else:
        stages.start("indicators", "indicators.json is up to date, reused", name)
    timings[f"{name}/indicators_s"] = time.perf_counter() - t
    return {"backbone_spec": base.backbone, "layers": getattr(backbone, "num_layers", None),
            "d_model": getattr(backbone, "d_model", None), "bank entries": len(entries),
            "learning_rate": base.optimizer.learning_rate}


def _balanced_tasks(base, train_tasks) -> str:
    """Which training tasks used a class-balanced stream, in words."""
    on = [t for t in train_tasks
          if base.effective_balance_classes(task_registry.get_spec(t))]
    setting = f"BALANCE_CLASSES={base.balance_classes!r}"
    return f"{', '.join(on)} ({setting})" if on else f"none ({setting})"


def _run_info(demo: DemoConfig, base, models: dict, cross_cfg, timings) -> dict:
    sizes = {}
    for t in list(demo.train_tasks) + list(demo.eval_only_tasks):
        spec = task_registry.get_spec(t)
        sizes[t] = dict(spec.sizes)
    info = {
        "models": models,
        "tasks": list(demo.train_tasks),
        "evaluation-only tasks": list(demo.eval_only_tasks),
        "seeds": list(demo.seeds),
        "train_steps": base.train_steps,
        "batch_size": base.batch_size,
        "prompt_length": base.prompt_length,
        "init": base.init_from,
        "optimizer": f"{base.optimizer.name} lr=" + ", ".join(
            f"{m['learning_rate']} ({name})" for name, m in models.items()),
        "eval_every": base.eval_every,
        "eval_examples (validation subset)": f"{base.eval_examples} ({base.eval_subset})",
        "compute dtype": base.compute_dtype or "float32",
        "loss": base.loss,
        "class-balanced sampling": _balanced_tasks(base, demo.train_tasks),
        "TPT pairs": list(demo.tpt_pairs),
        "TPT optimizer state": base.init_optimizer,
        "matrix split / examples": f"{demo.matrix_split} / {demo.matrix_eval_examples}",
        "metric": demo.metric,
        "dataset sizes": sizes,
        "stage times (s)": {k: round(v, 1) for k, v in timings.items()},
    }
    if cross_cfg is not None:
        info["cross-model"] = {"tasks": list(cross_cfg.tasks),
                               "projector tasks": list(cross_cfg.train_tasks),
                               "mappers": list(cross_cfg.mappers),
                               "examples per task": cross_cfg.eval_examples,
                               "TPT_MODEL tasks": list(cross_cfg.tpt_tasks)}
    return info
