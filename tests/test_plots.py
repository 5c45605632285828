"""The report's plots: what a reader needs is on them, and nothing is cut off or padded."""

import math

import numpy as np
import pytest
from matplotlib import image as mpimg

from ptransfer.report import plots

PAD_PX = int(0.15 * 120) + 3  # plots._save's pad_inches at its dpi, plus antialiasing


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the plot functions draw (captured as they close them)."""
    shown = []
    real_close = plots.plt.close
    monkeypatch.setattr(plots.plt, "close", lambda fig: shown.append(fig))
    yield shown
    for fig in shown:
        real_close(fig)


def _texts(fig):
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]


def _content_margins(path):
    """Blank pixel rows / columns on each side of a PNG: (left, right, top, bottom)."""
    img = mpimg.imread(path)[..., :3]
    ink = (img < 0.98).any(axis=-1)
    cols, rows = np.flatnonzero(ink.any(axis=0)), np.flatnonzero(ink.any(axis=1))
    return cols[0], ink.shape[1] - 1 - cols[-1], rows[0], ink.shape[0] - 1 - rows[-1]


def _cross_task():
    sources = ["mr", "sst2", "mnli"]
    targets = ["mr", "sst2", "mnli", "laptop"]  # laptop: evaluation-only, no own prompt
    rel = {s: {t: (1.0 if s == t else 0.5) for t in targets[:3]} for s in sources}
    return {"sources": sources, "targets": targets, "relative": rel,
            "task_types": {"mr": "sentiment", "sst2": "sentiment", "mnli": "nli",
                           "laptop": "sentiment"},
            "baselines_relative": {"no_prompt": {t: 0.2 for t in targets[:3]}}}


def test_heatmap_has_a_labelled_colour_bar_explained_blank_columns_and_no_margin(
        tmp_path, figures):
    path = plots.transfer_heatmap(_cross_task(), str(tmp_path / "heat.png"))
    (fig,) = figures
    texts = _texts(fig)
    assert "relative performance (target's own prompt = 1)" in texts  # the colour bar
    assert sum(plots.EVAL_ONLY_NOTE == t for t in texts) == 1  # only the laptop column
    assert any("S→T / T→T" in t for t in texts)
    assert max(_content_margins(path)) <= PAD_PX


def test_indicator_scatter_labels_points_by_pair_with_n_in_the_title(tmp_path, figures):
    pairs = [["mr", "sst2"], ["sst2", "mr"], ["mr", "mnli"]]
    ind = {"points": {"ON": [[0.9, 0.8], [0.7, 0.6], [0.1, 0.2]],
                      "E_concat": [[0.3, 0.8], [0.2, 0.6], [0.4, 0.2]]},
           "point_pairs": pairs,
           "spearman": {"overall": {"ON": 1.0, "E_concat": math.nan}, "n": {"ON": 3, "E_concat": 3}}}
    path = plots.indicator_scatter(ind, str(tmp_path / "scatter.png"))
    (fig,) = figures
    texts = _texts(fig)
    assert texts.count("mr→sst2") == 2 and texts.count("mr→mnli") == 2
    assert "ON  (n = 3 pairs, Spearman ρ +1.00)" in texts and "E_concat  (n = 3 pairs)" in texts
    assert max(_content_margins(path)) <= PAD_PX


def test_tpt_curves_draw_a_seed_band_once_there_are_seeds(tmp_path, figures):
    def pair(seeds):
        curve = {str(s): [[0, 50.0 + s], [10, 60.0 + 2 * s], [20, 70.0 - s]] for s in seeds}
        return {"source": "mr", "target": "sst2", "metric": "accuracy",
                "pt": {"curves": curve}, "tpt": {"curves": curve}}

    plots.tpt_curves(pair([0]), str(tmp_path / "one.png"))
    plots.tpt_curves(pair([0, 1, 2]), str(tmp_path / "three.png"))
    one, three = figures
    assert not one.axes[0].collections  # one seed: no band
    bands = three.axes[0].collections
    assert len(bands) == 2  # PT and TPT
    # the band of step 10 is mean ± std over the seeds: 62 ± std(60, 62, 64)
    ys = bands[0].get_paths()[0].vertices[:, 1]
    std = np.std([60.0, 62.0, 64.0])
    assert any(np.isclose(y, 62 - std) for y in ys) and any(np.isclose(y, 62 + std) for y in ys)
    assert any("±1 std" in t for t in _texts(three))
