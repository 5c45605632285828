"""From a prompt bank and a transfer matrix to `indicators.json`.

For every pair of tasks (S, T) that both have prompts in the bank, each
indicator compares S's prompts with T's prompts (averaged over all seed
pairs), and its Spearman correlation with the measured relative transfer
S→T is taken per target and over all off-diagonal pairs (the paper's
table). ON is also computed on every window of consecutive layers, to show
where its signal lives.

Stimulus: "dummy" (the paper's single fixed input: the text "." — one
ordinary token; a masked LM gets its start, mask and end tokens: `Backbone.stimulus_ids()`) or
"task:<name>" (the first `stimulus_examples` validation examples of a task).

ON's "activated" neuron follows the backbone's FFN rule (`on_rule`, the
default of `Backbone.ffn_activation_rules`: the activation of a ReLU/GELU FFN,
the gate's pre-activation of a gated one); every other rule the backbone
offers is reported beside it as its own indicator `ON_<rule>` (gated FFNs:
`ON_product`, act(gate) * up > 0).

Prompts compared at the same point: indicators read each run's *final* prompt
by default (`prompt_kind`; the bank keeps the best and the final one), since
best-scoring prompts are banked at different steps of runs that start from one
shared init, and an indicator would partly measure how far each has moved
from it. The init control splits the entry pairs of two tasks into those that
started from the same initial prompt (same init spec and seed) and those with
independent inits (different seeds), and repeats the Spearman summary on
each (`init_control`); it needs a seed-drawn init ('random' / 'vocab'), shared
across tasks for one seed, and at least two seeds per task, else it says why
it is unavailable.

Output keys: backbone, tasks, prompt_kind, init_control, stimulus, positions, threshold, window_size,
on_rule, on_rules, pairwise {indicator: {s: {t: value}}}, points {indicator:
[[value, rel], ...]}, spearman {overall {ind: rho}, per_target {ind: {t: rho}},
windows {"a-b": rho}, pvalues {ind: p}, n, mean_per_target {ind: rho} (the
headline), summary {ind: `correlation.SpearmanSummary.to_json()`: per-target,
mean and pooled rho with bootstrap 95% intervals, dropped targets}},
retrieval {ind: {hits, targets, rate, picks}}: for each target, whether the
source an indicator ranks first is the source with the best measured transfer
(the use `transfer init --sources auto` makes of it). The bootstrap resamples
the matrix's evaluation examples when `cross_task.json` has per-example
predictions (`experiments.matrix.relative_replicates`), else the task pairs.
"""

from __future__ import annotations

import numpy as np

import tasks
from ptransfer import prompts, scoring
from ptransfer.core.errors import ConfigError
from ptransfer.data import default_truncation, load_task
from ptransfer.experiments.matrix import load_bank_prompts, relative_replicates
from ptransfer.indicators import correlation, neurons, similarity

SIMILARITY_NAMES = ("E_concat", "E_average", "C_concat", "C_average")


def stimulus_batch(backbone, stimulus: str = "dummy", examples: int = 8, data_dir=None,
                   input_length: int = 64):
    """(inputs [B, Li], inputs_mask [B, Li]) int32, left-padded, for the chosen stimulus."""
    import jax.numpy as jnp  # noqa: F401  (jax initialised before tf in some setups)

    if stimulus == "dummy":
        arr = np.asarray([backbone.stimulus_ids()], np.int32)
        return arr, np.ones_like(arr)
    if stimulus.startswith("task:"):
        name = stimulus.partition(":")[2]
        spec = tasks.get_spec(name)
        task, mlm = load_task(name, backbone, data_dir)
        es = scoring.build_eval_set(task, spec, backbone, "validation", examples,
                                    {"inputs": input_length, "targets": 8},
                                    truncate_inputs=default_truncation(backbone), mlm=mlm)
        return es.inputs, es.inputs_mask
    raise ConfigError(f"unknown stimulus {stimulus!r}; use 'dummy' or 'task:<name>'.")


def _by_task(matrix: np.ndarray, task_of: list[str], tasks: list[str],
             pair_mask: np.ndarray | None = None) -> np.ndarray:
    """Entry-level [K, K] -> task-level [S, S] by averaging over the tasks' entry pairs
    (only those where `pair_mask` [K, K] is True; NaN where none is)."""
    idx = {t: [i for i, x in enumerate(task_of) if x == t] for t in tasks}
    keep = np.ones(matrix.shape, bool) if pair_mask is None else np.asarray(pair_mask, bool)
    out = np.full((len(tasks), len(tasks)), np.nan)
    for a, s in enumerate(tasks):
        for b, t in enumerate(tasks):
            block, use = matrix[np.ix_(idx[s], idx[t])], keep[np.ix_(idx[s], idx[t])]
            if use.any():
                out[a, b] = float(np.mean(block[use]))
    return out


SEED_DRAWN_INITS = ("random", "vocab")


def init_control(per_entry: dict, entries, tasks_: list[str], rel: np.ndarray, *,
                 transfer_replicates=None, resamples: int = 1000, seed: int = 0) -> dict:
    """The Spearman summaries again on same-init and on independent-init entry pairs.

    per_entry: {indicator: [K, K]} over `entries` (bank entries, in order);
    rel: the transfer matrix [S, S] over `tasks_`. Two entries share their init
    when their init spec and seed agree and the init is seed-drawn (module
    docstring). Returns {available, reason} or {available, pairs {same_init,
    independent_init}: entry-pair counts across tasks, summary {variant:
    {indicator: SpearmanSummary json}}}.
    """
    inits = {str(e.meta.get("init")) for e in entries}
    not_drawn = sorted(i for i in inits if prompts.parse_init_from(i)[0] not in SEED_DRAWN_INITS)
    if not_drawn:
        return {"available": False,
                "reason": f"init {', '.join(not_drawn)} is not drawn from the seed alone, so "
                          "entries of two tasks do not share an initial prompt"}
    task_of = [e.task for e in entries]
    key = [(str(e.meta.get("init")), e.meta.get("seed")) for e in entries]
    same = np.array([[a == b for b in key] for a in key])
    cross_task = np.array([[a != b for b in task_of] for a in task_of])
    variants = {"same_init": same, "independent_init": ~same}
    pairs = {v: int((m & cross_task).sum()) for v, m in variants.items()}
    off = correlation.off_diagonal_mask(tasks_, tasks_)
    summary = {}
    for variant, mask in variants.items():
        mats = {k: _by_task(m, task_of, tasks_, mask) for k, m in per_entry.items()}
        if not all(np.isfinite(m[off]).all() for m in mats.values()):
            return {"available": False, "pairs": pairs,
                    "reason": f"some pair of tasks has no {variant.replace('_', '-')} pair of "
                              "runs (needs two or more seeds per task)"}
        summary[variant] = {k: correlation.spearman_summary(
            m, rel, tasks_, tasks_, name=k, transfer_replicates=transfer_replicates,
            resamples=resamples, seed=seed).to_json() for k, m in mats.items()}
    return {"available": True, "pairs": pairs, "summary": summary}


def compute_indicators(backbone, bank_dir: str, cross_task: dict, *, stimulus: str = "dummy",
                       stimulus_examples: int = 8, positions="last", threshold: float = 0.0,
                       window_size: int = 3, data_dir=None, bootstrap_resamples: int = 1000,
                       bootstrap_seed: int = 0, prompt_kind: str = "final") -> dict:
    """Every indicator for every task pair, and their Spearman correlations with transfer.

    prompt_kind: which prompt of each bank entry the indicators compare ('final',
    'best' or 'exported'; module docstring).
    """
    if cross_task["backbone"] != backbone.name:
        raise ConfigError(f"the transfer matrix is for backbone {cross_task['backbone']!r}, not "
                          f"{backbone.name!r}; compute both on the same backbone.")
    with_prompts = [t for t in cross_task["sources"] if t in cross_task["targets"]]
    if len(with_prompts) < 2:
        raise ConfigError("indicators need at least two tasks that are both sources (with bank "
                          "prompts) and targets of the transfer matrix.")
    entries, stack = load_bank_prompts(bank_dir, backbone, with_prompts, kind=prompt_kind)
    task_of = [e.task for e in entries]
    tasks_ = [t for t in with_prompts if t in task_of]

    per_entry = {name: np.asarray(similarity.similarity_matrix(name, stack))
                 for name in SIMILARITY_NAMES}
    inputs, inputs_mask = stimulus_batch(backbone, stimulus, stimulus_examples, data_dir)
    rules = backbone.ffn_activation_rules  # the first is ON's rule
    for rule in rules:
        rule_masks = neurons.capture_activation_masks(
            backbone, backbone.params, stack, inputs, inputs_mask, positions=positions,
            threshold=threshold, names=[e.ref for e in entries],
            prompt_backbones=[e.backbone for e in entries], rule=rule)
        name = "ON" if rule == rules[0] else f"ON_{rule}"
        per_entry[name] = np.asarray(neurons.on_matrix(rule_masks))
        if rule == rules[0]:
            masks = rule_masks
    matrices = {name: _by_task(m, task_of, tasks_) for name, m in per_entry.items()}
    windows = {f"{a}-{b - 1}": _by_task(m, task_of, tasks_)
               for (a, b), m in neurons.on_by_window(masks, size=window_size).items()}

    rel = np.array([[cross_task["relative"][s][t] if cross_task["relative"][s].get(t) is not None
                     else np.nan for t in tasks_] for s in tasks_], np.float64)
    tables = correlation.correlate_all(matrices, rel, tasks_, tasks_)
    window_tables = correlation.correlate_all(windows, rel, tasks_, tasks_)
    off = correlation.off_diagonal_mask(tasks_, tasks_)
    replicates = relative_replicates(cross_task, tasks_, tasks_, resamples=bootstrap_resamples,
                                     seed=bootstrap_seed)
    summaries = {k: correlation.spearman_summary(m, rel, tasks_, tasks_, name=k,
                                                 transfer_replicates=replicates,
                                                 resamples=bootstrap_resamples,
                                                 seed=bootstrap_seed).to_json()
                 for k, m in matrices.items()}
    control = init_control(per_entry, entries, tasks_, rel, transfer_replicates=replicates,
                           resamples=bootstrap_resamples, seed=bootstrap_seed)
    return {
        "prompt_kind": prompt_kind,
        "init_control": control,
        "retrieval": {name: top_source_retrieval(m, rel, tasks_) for name, m in matrices.items()},
        "backbone": backbone.name,
        "tasks": tasks_,
        "stimulus": stimulus,
        "positions": positions if isinstance(positions, str) else list(positions),
        "threshold": threshold,
        "window_size": window_size,
        "on_rule": rules[0],
        "on_rules": list(rules),
        "num_layers": masks.num_layers,
        "pairwise": {name: {s: {t: float(m[i, j]) for j, t in enumerate(tasks_)}
                            for i, s in enumerate(tasks_)} for name, m in matrices.items()},
        "points": {name: [[float(m[i, j]), float(rel[i, j])] for i in range(len(tasks_))
                          for j in range(len(tasks_)) if off[i, j] and np.isfinite(rel[i, j])]
                   for name, m in matrices.items()},
        # the (source, target) of each point, in the same order
        "point_pairs": [[tasks_[i], tasks_[j]] for i in range(len(tasks_)) for j in range(len(tasks_))
                        if off[i, j] and np.isfinite(rel[i, j])],
        "spearman": {
            "overall": {k: t.overall.to_json()["rho"] for k, t in tables.items()},
            "pvalues": {k: t.overall.to_json()["pvalue"] for k, t in tables.items()},
            "n": {k: t.overall.n for k, t in tables.items()},
            "per_target": {k: {tt: s.to_json()["rho"] for tt, s in t.per_target.items()}
                           for k, t in tables.items()},
            "windows": {k: t.overall.to_json()["rho"] for k, t in window_tables.items()},
            "mean_per_target": {k: v["mean_per_target"] for k, v in summaries.items()},
            "summary": summaries,
        },
    }


def top_source_retrieval(indicator: np.ndarray, relative: np.ndarray, tasks: list[str]) -> dict:
    """How often the source ranked first by `indicator` [S, T] is the best actual
    source of the target (highest relative transfer), self pairs excluded."""
    picks, hits = {}, 0
    for j, target in enumerate(tasks):
        others = [i for i in range(len(tasks)) if i != j and np.isfinite(relative[i, j])]
        if not others:
            continue
        chosen = max(others, key=lambda i: indicator[i, j])
        best = max(others, key=lambda i: relative[i, j])
        picks[target] = {"ranked_first": tasks[chosen], "best_actual": tasks[best]}
        hits += int(relative[chosen, j] == relative[best, j])
    return {"hits": hits, "targets": len(picks),
            "rate": hits / len(picks) if picks else None, "picks": picks}


def rank_sources_by_on(backbone, target_prompt: np.ndarray, bank_dir: str, target: str, *,
                       stimulus: str = "dummy", positions="last", data_dir=None) -> list[tuple[str, float]]:
    """Bank entries of other tasks ranked by ON with a (briefly trained) target prompt.

    Returns [(entry ref, ON)] best first; used by `transfer init --sources auto`.
    """
    entries, stack = load_bank_prompts(bank_dir, backbone)
    keep = [i for i, e in enumerate(entries) if e.task != target]
    if not keep:
        raise ConfigError(f"the bank has no prompt of a task other than {target!r} to transfer from.")
    inputs, inputs_mask = stimulus_batch(backbone, stimulus, data_dir=data_dir)
    capture = neurons.ActivationCapture(backbone, positions=positions)
    bank_masks = capture(backbone.params, stack[keep], inputs, inputs_mask,
                         names=[entries[i].ref for i in keep])
    target_masks = capture(backbone.params, np.asarray(target_prompt, np.float32)[None],
                           inputs, inputs_mask, names=[f"{target} (probe)"])
    on = neurons.on_matrix(target_masks, bank_masks)[0]
    order = np.argsort(-on, kind="stable")
    return [(entries[keep[i]].ref, float(on[i])) for i in order]
