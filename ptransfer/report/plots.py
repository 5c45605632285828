"""PNG plots drawn from the results JSON only (never from in-memory state).

Inputs are the dicts written by `transfer.matrix` (cross_task.json),
`experiments.tpt` (tpt.json), `experiments.indicators` (indicators.json) and
`experiments.cross_model` (cross_model.json); the keys each function reads
are named in its docstring.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str) -> str:
    # bbox_inches="tight": the PNG is cut to what is drawn, so long titles and tick
    # labels are never clipped and no empty margin is left around the axes
    fig.savefig(path, dpi=120, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return path


EVAL_ONLY_NOTE = "eval-only target:\nno prompt of its own,\nso no relative score"


def transfer_heatmap(cross_task: dict, path: str) -> str:
    """Relative performance S→T as a heatmap, tasks grouped by type.

    A target column with no value at all is a task that has no prompt of its
    own (evaluation-only), so S→T cannot be divided by T→T: the column says so.

    Reads: sources, targets, relative[s][t], task_types, baselines_relative.
    """
    sources, targets = cross_task["sources"], cross_task["targets"]
    rows = list(sources) + [f"({b})" for b in cross_task.get("baselines_relative", {})]
    values = [[cross_task["relative"][s].get(t, math.nan) for t in targets] for s in sources]
    for b, rel in cross_task.get("baselines_relative", {}).items():
        values.append([rel.get(t, math.nan) for t in targets])
    grid = np.array(values, dtype=float).reshape(len(rows), len(targets))
    top = float(np.nanmax(grid)) if np.isfinite(grid).any() else 1.0
    fig, ax = plt.subplots(figsize=(0.75 * len(targets) + 3.0, 0.45 * len(rows) + 1.6),
                           layout="constrained")
    im = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=max(1.0, top), aspect="auto")
    ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("target task")
    ax.set_ylabel("source prompt")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if not math.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] < 0.6 * max(1.0, top) else "black")
    blank = [j for j in range(len(targets)) if np.isnan(grid[:, j]).all()]
    for j in blank:
        ax.axvspan(j - 0.5, j + 0.5, facecolor="0.93", hatch="///", edgecolor="0.75", lw=0)
        ax.text(j, (len(rows) - 1) / 2, EVAL_ONLY_NOTE, rotation=90, ha="center", va="center",
                fontsize=7, color="0.3")
    types = cross_task.get("task_types", {})
    ax.set_title("Zero-shot transfer, relative performance S→T / T→T\n(target types: " +
                 ", ".join(sorted({types.get(t, "?") for t in targets})) + ")", fontsize=10)
    cbar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    cbar.set_label("relative performance (target's own prompt = 1)")
    return _save(fig, path)


GROUP_LABELS = {"trained_on": "trained on", "unseen_same_type": "unseen, same type",
                "other_types": "other types", "all": "all tasks"}


def cross_model_bars(cross_model: dict, path: str) -> str:
    """Relative performance per mapper (bars) and task group (x), one panel per direction;
    the no-prompt and random-prompt baselines beside the mappers, 1.0 = the target's own
    prompt.

    Reads: mappers, groups {task: group}, directions[].name, directions[].table
    {mapper|baseline: {group: mean relative or None}}.
    """
    present = set(cross_model["groups"].values())
    groups = [g for g in GROUP_LABELS if g in present or g == "all"]
    directions = cross_model["directions"]
    bars = [m for m in cross_model["mappers"]] + ["no_prompt", "random_prompt"]
    fig, axes = plt.subplots(1, len(directions), squeeze=False,
                             figsize=(max(5.0, 0.22 * len(groups) * len(bars) + 2) *
                                      len(directions), 4.2))
    width = 0.8 / len(bars)
    colors = plt.get_cmap("tab10")
    for ax, direction in zip(axes[0], directions):
        table = direction.get("table", {})
        for i, name in enumerate(bars):
            row = table.get(name, {})
            values = [row.get(g) for g in groups]
            x = np.arange(len(groups)) + (i - (len(bars) - 1) / 2) * width
            ax.bar(x, [math.nan if v is None else v for v in values], width,
                   label=name.replace("_", " "), color="0.6" if name == "no_prompt" else
                   "0.8" if name == "random_prompt" else colors(i))
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(len(groups)), [GROUP_LABELS[g] for g in groups])
        ax.set_ylabel("relative performance (own prompt = 1)")
        ax.set_title(direction["name"])
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _seed_band(curves: dict):
    """(steps, mean, std) over the seeds' curves at the steps they all have; None if < 2 seeds."""
    if len(curves) < 2:
        return None
    by_seed = [dict((int(step), float(score)) for step, score in c) for c in curves.values()]
    steps = sorted(set.intersection(*(set(c) for c in by_seed)))
    if not steps:
        return None
    scores = np.array([[c[st] for st in steps] for c in by_seed])
    return np.array(steps), scores.mean(axis=0), scores.std(axis=0)


def tpt_curves(pair: dict, path: str) -> str:
    """Eval curves of vanilla PT and TPT for one source→target pair: with two or more
    seeds, the mean over seeds with a band of ±1 standard deviation (seeds faint behind).

    Reads: source, target, metric, pt.curves{seed: [[step, score]]}, tpt.curves.
    """
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for label, key, color in (("PT (vanilla)", "pt", "tab:blue"),
                              (f"TPT from {pair['source']}", "tpt", "tab:orange")):
        curves = {s: c for s, c in pair[key]["curves"].items() if c}
        band = _seed_band(curves)
        for k, (seed, curve) in enumerate(sorted(curves.items())):
            steps, scores = zip(*curve)
            if band is None:
                ax.plot(steps, scores, color=color, alpha=0.9 if k == 0 else 0.45,
                        marker=".", label=label if k == 0 else None)
            else:
                ax.plot(steps, scores, color=color, alpha=0.25, lw=0.8)
        if band is not None:
            steps, mean, std = band
            ax.plot(steps, mean, color=color, marker=".", label=f"{label}, mean of {len(curves)}")
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, lw=0,
                            label=f"{label}, ±1 std")
    ax.set_xlabel("training step")
    ax.set_ylabel(pair.get("metric", "score"))
    ax.set_title(f"{pair['target']}: PT vs TPT ({len(pair['pt']['curves'])} seed(s))")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


MAX_PAIR_LABELS = 12  # more labels than this on one panel would hide the points


def _pair_labels(indicators: dict, name: str, n: int) -> list[str]:
    pairs = indicators.get("point_pairs")
    if not pairs or len(pairs) != n:
        return [""] * n
    return [f"{s}→{t}" for s, t in pairs]


def indicator_scatter(indicators: dict, path: str) -> str:
    """One panel per indicator: its value vs measured relative transfer, one point per
    (source, target) pair, labelled by pair (all of them when few, else the highest
    and lowest transfers), with n and Spearman's ρ in the title.

    Reads: points[indicator] = [[value, relative_transfer], ...], point_pairs
    [[source, target], ...] (same order; optional), spearman.overall, spearman.n.
    """
    names = list(indicators["points"])
    cols = max(1, min(3, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.8 * rows), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes.flat, names):
        pts = np.array(indicators["points"][name], dtype=float).reshape(-1, 2)
        ax.scatter(pts[:, 0], pts[:, 1], s=18)
        labels = _pair_labels(indicators, name, len(pts))
        order = np.argsort(pts[:, 1], kind="stable")
        shown = order if len(pts) <= MAX_PAIR_LABELS else np.r_[
            order[:MAX_PAIR_LABELS // 2], order[-(MAX_PAIR_LABELS // 2):]]
        for k in shown:
            if labels[k]:
                ax.annotate(labels[k], pts[k], xytext=(3, 3), textcoords="offset points",
                            fontsize=6, color="0.25")
        rho = indicators["spearman"]["overall"].get(name)
        n = indicators["spearman"].get("n", {}).get(name, len(pts))
        rho_text = f", Spearman ρ {rho:+.2f}" if rho is not None and not math.isnan(rho) else ""
        ax.set_title(f"{name}  (n = {n} pairs{rho_text})", fontsize=9)
        ax.set_xlabel(name)
        ax.set_ylabel("relative transfer")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return _save(fig, path)


def on_by_window(indicators: dict, path: str) -> str:
    """Spearman correlation of ON per window of consecutive layers.

    Reads: spearman.windows = {"0-2": rho, ...} in layer order.
    """
    windows = indicators["spearman"]["windows"]
    labels = list(windows)
    values = [windows[w] if windows[w] is not None else math.nan for w in labels]
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(labels) + 2), 3.6))
    ax.bar(range(len(labels)), values, color="tab:green")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("layers")
    ax.set_ylabel("Spearman ρ (ON vs transfer)")
    ax.set_title("Where ON's signal lives")
    return _save(fig, path)


def interval_bars(panels: dict, path: str, *, ylabel: str, title: str = "") -> str:
    """Grouped bars with 95% error bars: one group per panel key (e.g. a direction), one
    bar per name inside it.

    panels: {group: {name: {"mean": x | None, "ci": [low, high] | None}}}.
    """
    groups = list(panels)
    names = list(dict.fromkeys(n for g in groups for n in panels[g]))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(groups) * len(names) + 3), 4.2))
    colors = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        x = np.arange(len(groups)) + (i - (len(names) - 1) / 2) * width
        cells = [panels[g].get(name) or {} for g in groups]
        means = np.array([math.nan if c.get("mean") is None else c["mean"] for c in cells])
        err = np.array([[m - c["ci"][0], c["ci"][1] - m] if c.get("ci") else [0.0, 0.0]
                        for m, c in zip(means, cells)]).T.reshape(2, -1)
        ax.bar(x, means, width, yerr=np.nan_to_num(err), capsize=3,
               label=name.replace("_", " "), color=colors(i % 10))
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)
