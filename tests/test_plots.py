"""Plots return Figures with the expected artists, leave pyplot alone, and save PNGs that PIL opens."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from cifake_lib.evaluation.metrics import apply_temperature, compute_metrics
from cifake_lib.viz import plots


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, len(y)), 0, 1)
    return y, p


def test_no_pyplot_so_no_backend_change():
    """Neither importing plots nor drawing and saving touches pyplot (hence no backend switch)."""
    code = (
        "import io, sys; from cifake_lib.viz import plots; "
        "fig = plots.histogram_figure([0, 1, 1], [0.2, 0.7, 0.9]); fig.savefig(io.BytesIO(), format='png'); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_roc_and_pr(scores, tmp_path):
    y, p = scores
    fig = plots.roc_figure({"probe": (y, p), "noise": (y, np.random.default_rng(1).random(len(y)))})
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.lines) == 3  # two curves + chance diagonal
    assert "AUC" in ax.get_legend().get_texts()[0].get_text()
    fig = plots.pr_figure({"probe": (y, p)})
    assert len(fig.axes[0].lines) == 1
    with pytest.raises(ValueError, match="'one'.*both"):
        plots.roc_figure({"one": (np.ones(5, int), np.linspace(0, 1, 5))})


def test_confusion(scores):
    y, p = scores
    m = compute_metrics(y, p, threshold=0.4, n_boot=0)
    fig = plots.confusion_figure(m)
    ax = fig.axes[0]
    assert len(ax.images) == 1 and len(ax.texts) == 4
    assert ax.texts[0].get_text().startswith(f"{m['confusion'][0][0]:,}")
    assert "0.400" in ax.get_title()
    fig2 = plots.confusion_figure(labels=y, preds=(p >= 0.4).astype(int))
    assert [t.get_text() for t in fig2.axes[0].texts] == [t.get_text() for t in ax.texts]
    with pytest.raises(ValueError, match="either"):
        plots.confusion_figure()


def test_histogram(scores):
    y, p = scores
    ax = plots.histogram_figure(y, p, threshold=0.37).axes[0]
    assert len(ax.patches) == 2 and len(ax.lines) == 1
    assert ax.lines[0].get_xdata()[0] == 0.37
    assert len(plots.histogram_figure(y, p, threshold=None).axes[0].lines) == 0


def test_reliability(scores):
    y, p = scores
    ax = plots.reliability_figure(y, p).axes[0]
    assert len(ax.lines) == 2 and "ECE" in ax.get_title()
    ax = plots.reliability_figure(y, p, p_calibrated=apply_temperature(p, 0.5)).axes[0]
    assert len(ax.lines) == 3 and "→" in ax.get_title()


def test_compare_bar(scores):
    y, p = scores
    rows = [dict(compute_metrics(y, p, n_boot=50), name="ensemble"),
            dict(compute_metrics(y, 1 - p, n_boot=50), name="inverted"),
            {"name": "one class", "roc_auc": None}]
    published = {"CIFAKE CNN": 0.93, "probe, low": 0.987, "probe, high": 0.991}
    fig = plots.compare_bar(rows, "roc_auc", published=published)
    ax = fig.axes[0]
    assert len(ax.patches) == 3  # bars are ours only; anchors are markers
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "ensemble", "inverted", "one class", "CIFAKE CNN (published)", "probe (published)"]
    assert len(ax.collections) == 2  # error bars for the two rows with a CI
    legend = [t.get_text() for t in fig.legends[0].get_texts()]  # below the axes, covering nothing
    assert legend == ["ours (bar), 95% CI (whisker)", "published (not ours)"]
    assert ax.get_xlabel() == "ROC AUC"
    texts = [t.get_text() for t in ax.texts]
    assert texts[:3] == [f"{rows[0]['roc_auc']:.4f}", f"{rows[1]['roc_auc']:.4f}", "n/a"]
    assert texts[3:] == ["0.9300", "0.9870–0.9910"]  # a range is one row, both ends written
    anchor_lines = [line for line in ax.lines if line.get_marker() == "D"]
    assert [list(line.get_xdata()) for line in anchor_lines] == [[0.93, 0.93], [0.987, 0.991]]
    assert plots.layout_problems(plots.fit_text(fig)) == []
    # a figure published only approximately: a hollow diamond labelled with its published text
    fig = plots.compare_bar(rows[:1], "accuracy", published={"CNN": 0.9298, "few-shot": "≈95%"}, context_only=True)
    ax = fig.axes[0]
    hollow = [line for line in ax.lines if line.get_marker() == "D" and line.get_markerfacecolor() == "white"]
    assert [list(line.get_xdata()) for line in hollow] == [[0.95, 0.95]]
    assert [t.get_text() for t in ax.texts][1:] == ["92.98%", "≈95%"]
    assert [t.get_text() for t in fig.legends[0].get_texts()][1:] == [
        "published (not ours; context only)", "published (not ours; context only), approximate"]
    assert plots.layout_problems(plots.fit_text(fig)) == []
    # a notebook's figure beside anchor_table: the same published rows as the table's column
    from cifake_lib.evaluation.published import anchor_table

    ours = {"probe (ours)": rows[0]}
    table = [r for r in anchor_table(ours) if r["source"] == "published" and r["accuracy"] != "—"]
    ax = plots.anchor_figure(ours, "accuracy", context_only=True).axes[0]
    drawn = [t.get_text() for t in ax.get_yticklabels()]
    assert drawn[0] == "probe" and len(drawn) == 1 + len(table) >= 3
    assert all(any(r["detector"] in label for label in drawn[1:]) for r in table)
    assert [t.get_text() for t in ax.texts][1:] == [r["accuracy"] for r in table]
    ax = plots.compare_bar(rows[:2], "natural_threshold.accuracy").axes[0]
    assert len(ax.patches) == 2 and len(ax.collections) == 2
    assert ax.get_xlabel() == "Accuracy at p_fake ≥ 0.5" and ax.texts[0].get_text().endswith("%")


def test_layout_problems_sees_cut_titles_and_covered_bars(scores):
    """The checker behind the smoke study's figure test fails on the faults it is meant to catch."""
    fig = Figure(figsize=(3, 2), layout="constrained")
    ax = fig.add_subplot()
    ax.bar([0, 1], [1, 1])
    ax.legend(["a long legend entry"], loc="center")
    ax.set_title("a title far too long for a figure three inches wide, cut at both edges when saved")
    problems = plots.layout_problems(fig)
    assert any("title far too long" in m and "beyond the figure" in m for m in problems)
    assert any("covers a bar" in m for m in problems)
    plots.fit_text(fig)
    assert "\n" in ax.get_title()
    assert not any("beyond the figure" in m for m in plots.layout_problems(fig))


def test_ax_argument_and_overview(scores):
    y, p = scores
    fig = Figure()
    axes = fig.subplots(1, 2)
    assert plots.roc_figure({"a": scores}, ax=axes[0]) is fig
    assert plots.histogram_figure(y, p, ax=axes[1]) is fig
    assert len(plots.metrics_figure(y, p, threshold=0.45).axes) == 4


def test_save_figure_png(scores, tmp_path):
    y, p = scores
    path = plots.save_figure(plots.roc_figure({"a": (y, p)}), tmp_path / "figs" / "roc.png", dpi=50)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert not list(path.parent.glob(".*tmp"))
    pdf = plots.save_figure(plots.histogram_figure(y, p), tmp_path / "hist.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
