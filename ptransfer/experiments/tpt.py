"""Transfer as initialization (TPT): PT on a target task started from a source prompt.

For a source prompt (a bank entry, or a projected prompt for TPT_MODEL) and a
target task, `run_pair` trains vanilla PT (the base config's initializer) and
TPT (initialized from the source prompt) with otherwise identical settings
and seeds, reads both eval curves, and computes the convergence and
comparable-result speedups of `experiments.speedups` per seed. "Reaching"
PT's best allows one standard error (`speedups.reach_tolerance`): the binomial
SE on the eval subset (`base.eval_examples`, an upper bound on its size, so
the tolerance is never wider than the SE), else the spread of PT's best over
the seeds; the exact-match speedups are kept beside it.

Runs live in `<out_dir>/<kind>/<target>/<source>/seed<k>` model dirs, so an
interrupted pair resumes from its checkpoints and a finished one is reused;
a vanilla-PT model dir may be shared with the run that wrote the target's
bank prompt (same settings, same seed) so it is not trained twice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from statistics import mean
from typing import Callable, Sequence

from ptransfer.bank import store as bank
from ptransfer.core.errors import ConfigError
from ptransfer.experiments.speedups import best, reach_tolerance, speedups
from ptransfer.training.trainer import Trainer

log = logging.getLogger(__name__)


def curve_of(records: Sequence[dict], metric: str) -> list[tuple[int, float]]:
    """metrics.jsonl rows -> [(step, score)] for `metric`."""
    return [(int(r["step"]), float(r[metric])) for r in records if metric in r]


def _mean_or_none(values):
    values = [v for v in values if v is not None]
    return mean(values) if values else None


def run_pair(base, source_prompt: str, source_name: str, target: str, seeds: Sequence[int],
             out_dir: str, *, backbone=None, init_scheme: str = "file",
             pt_model_dir: Callable[[str, int], str] | None = None,
             init_optimizer: str | None = None) -> dict:
    """Runs PT and TPT on `target` for each seed; returns the pair's JSON dict.

    Args:
      base: a TrainConfig whose task / init / model_dir / seed / run_name are replaced.
      source_prompt: a bank entry dir or .npy of the source prompt.
      source_name: the source's label in results (e.g. its task name).
      init_scheme: 'file' (same backbone) or 'projected' (TPT_MODEL).
      pt_model_dir: (target, seed) -> model dir of the vanilla PT run to reuse.
      init_optimizer: TPT's optimizer start, 'fresh' or 'source' (the source
        entry's AdamW moments carried over, as the official code; see
        `training.trainer`); None: the base config's. Vanilla PT starts fresh.
    """
    init_optimizer = init_optimizer or base.init_optimizer
    if not seeds:
        raise ConfigError("transfer init needs at least one seed.")
    if not os.path.exists(source_prompt):
        raise ConfigError(f"source prompt {source_prompt!r} does not exist; give a bank entry "
                          "(`ptransfer bank list`) or a .npy file.")
    pair = {"source": source_name, "target": target, "source_prompt": os.path.abspath(source_prompt),
            "seeds": list(seeds), "pt": {"curves": {}, "model_dirs": {}},
            "tpt": {"curves": {}, "model_dirs": {}}, "speedups": {},
            "init_optimizer": init_optimizer,
            "source_prompt_step": _exported_step(source_prompt)}
    metric = None
    tag = source_name + ("+opt" if init_optimizer == "source" else "")
    curves = {}
    for seed in seeds:
        results = {}
        for kind, init in (("pt", base.init_from), ("tpt", f"{init_scheme}:{source_prompt}")):
            if kind == "pt" and pt_model_dir is not None:
                model_dir = pt_model_dir(target, seed)
            else:
                model_dir = os.path.join(out_dir, kind, target,
                                         tag if kind == "tpt" else "vanilla", f"seed{seed}")
            cfg = dataclasses.replace(base, task=target, init_from=init, seed=int(seed),
                                      model_dir=model_dir,
                                      init_optimizer=init_optimizer if kind == "tpt"
                                      else base.init_optimizer,
                                      run_name=f"{kind}-{tag}-seed{seed}" if kind == "tpt"
                                      else f"seed{seed}")
            log.info("transfer init: %s on %s seed %d (%s)", kind.upper(), target, seed, init)
            result = Trainer(cfg, backbone=backbone).run()
            metric = metric or result.metric
            results[kind] = curve_of(result.curve, result.metric)
            pair[kind]["curves"][str(seed)] = [list(p) for p in results[kind]]
            pair[kind]["model_dirs"][str(seed)] = model_dir
        curves[seed] = results
    seed_bests = [best(c["pt"])[0] for c in curves.values() if c["pt"]]
    reach = {}
    for seed, results in curves.items():
        pt_best = best(results["pt"])[0] if results["pt"] else 0.0
        tol, source = reach_tolerance(pt_best, eval_size=base.eval_examples, seed_bests=seed_bests)
        reach[str(seed)] = {"se": tol, "source": source}
        pair["speedups"][str(seed)] = speedups(results["pt"], results["tpt"],
                                               tolerance=tol).to_json()
    sp = pair["speedups"].values()
    firsts = [(pair["tpt"]["curves"][s][0][1] - pair["pt"]["curves"][s][0][1])
              for s in pair["pt"]["curves"] if pair["pt"]["curves"][s] and pair["tpt"]["curves"][s]]
    pair.update({
        "metric": metric,
        "mean_convergence_speedup": _mean_or_none([s["convergence"] for s in sp]),
        # N/A when any seed's TPT never reached PT's best (as the paper's tables).
        "mean_comparable_speedup": (None if any(s["comparable"] is None for s in sp)
                                    else _mean_or_none([s["comparable"] for s in sp])),
        "mean_comparable_speedup_exact": (
            None if any(s["comparable_exact"] is None for s in sp)
            else _mean_or_none([s["comparable_exact"] for s in sp])),
        # "reached" = within this many points (one SE) of PT's best, per seed
        "reach_tolerance": reach,
        "pt_best": _mean_or_none([s["pt_best"] for s in sp]),
        "tpt_best": _mean_or_none([s["tpt_best"] for s in sp]),
        "head_start": _mean_or_none(firsts),
    })
    return pair


def _exported_step(source_prompt: str) -> int | None:
    """The training step the bank entry's prompt was taken at (its best or final
    step, as it was exported), None for a .npy file or a projected prompt. 0 means
    the entry holds its run's initial prompt: the run never beat its step-0 score."""
    if not os.path.isdir(source_prompt):
        return None
    meta = bank.read_entry(source_prompt)[1]
    step = meta.get("final_step") if meta.get("exported") == "final" else meta.get("best_step")
    return None if step is None else int(step)


def best_zero_shot_source(cross_task: dict, target: str, exclude_self: bool = True) -> str:
    """The source whose prompt scored best zero-shot on `target` in a matrix JSON."""
    candidates = {s: row.get(target) for s, row in cross_task["scores"].items()
                  if not (exclude_self and s == target) and row.get(target) is not None}
    if not candidates:
        raise ConfigError(f"the transfer matrix has no source scored on {target!r}; run "
                          "`ptransfer transfer matrix` with it among --targets.")
    return max(candidates, key=candidates.get)
