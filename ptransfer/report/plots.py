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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def transfer_heatmap(cross_task: dict, path: str) -> str:
    """Relative performance S→T as a heatmap, tasks grouped by type.

    Reads: sources, targets, relative[s][t], task_types, baselines_relative.
    """
    sources, targets = cross_task["sources"], cross_task["targets"]
    rows = list(sources) + [f"({b})" for b in cross_task.get("baselines_relative", {})]
    values = [[cross_task["relative"][s].get(t, math.nan) for t in targets] for s in sources]
    for b, rel in cross_task.get("baselines_relative", {}).items():
        values.append([rel.get(t, math.nan) for t in targets])
    grid = np.array(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 * len(targets) + 2.5, 0.6 * len(rows) + 2))
    im = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=max(1.0, float(np.nanmax(grid))))
    ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("target task")
    ax.set_ylabel("source prompt")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if not math.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] < 0.6 else "black")
    types = cross_task.get("task_types", {})
    ax.set_title("Zero-shot transfer, relative performance\n(" +
                 ", ".join(sorted({types.get(t, "?") for t in targets})) + ")")
    fig.colorbar(im, ax=ax, fraction=0.04)
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


def tpt_curves(pair: dict, path: str) -> str:
    """Eval curves of vanilla PT and TPT for one source→target pair.

    Reads: source, target, metric, pt.curves{seed: [[step, score]]}, tpt.curves.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, key, color in (("PT (vanilla)", "pt", "tab:blue"),
                              (f"TPT from {pair['source']}", "tpt", "tab:orange")):
        for k, (seed, curve) in enumerate(sorted(pair[key]["curves"].items())):
            steps, scores = zip(*curve)
            ax.plot(steps, scores, color=color, alpha=0.9 if k == 0 else 0.45,
                    marker=".", label=label if k == 0 else None)
    ax.set_xlabel("training step")
    ax.set_ylabel(pair.get("metric", "score"))
    ax.set_title(f"{pair['target']}: PT vs TPT ({len(pair['pt']['curves'])} seed(s))")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def indicator_scatter(indicators: dict, path: str) -> str:
    """One panel per indicator: its value vs measured relative transfer, per pair.

    Reads: points[indicator] = [[value, relative_transfer], ...], spearman.overall.
    """
    names = list(indicators["points"])
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        pts = np.array(indicators["points"][name], dtype=float).reshape(-1, 2)
        ax.scatter(pts[:, 0], pts[:, 1], s=18)
        rho = indicators["spearman"]["overall"].get(name)
        ax.set_title(f"{name}  (Spearman {rho:+.2f})" if rho is not None and not math.isnan(rho)
                     else name)
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
