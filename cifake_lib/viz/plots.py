"""Figures for notebooks, reports and the CLI. Each function returns a matplotlib Figure.

Figures are built with `matplotlib.figure.Figure`, not pyplot: importing this module
changes no backend, nothing is shown or kept in pyplot's registry (so a notebook cell that
returns one displays it once, and loops do not leak memory). Every function also takes
`ax=` to draw into an existing Axes (e.g. a grid of panels) and then returns its Figure.
`save_figure` writes PNG (or PDF/SVG by suffix) atomically.

Labels: 1 = FAKE (the positive class), 0 = REAL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cifake_lib import LABEL_NAMES
from cifake_lib.core.files import atomic_write
from cifake_lib.evaluation.metrics import (
    ECE_BINS,
    _check_inputs,
    compute_metrics,
    expected_calibration_error,
    reliability_bins,
)

COLORS = {0: "tab:blue", 1: "tab:red"}  # REAL, FAKE
Curves = Mapping[str, tuple[Any, Any]]  # {name: (labels, p_fake)}


def _axes(ax: Axes | None, figsize: tuple[float, float] = (5.5, 4.5)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _checked_curves(curves: Curves) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if not curves:
        raise ValueError("no curves to plot: pass {name: (labels, p_fake)}")
    out = []
    for name, pair in curves.items():
        try:
            y, p, _ = _check_inputs(*pair)
        except (TypeError, ValueError) as e:
            raise ValueError(f"curve {name!r}: {e}") from None
        if y.min() == y.max():
            raise ValueError(f"curve {name!r}: needs both REAL and FAKE examples")
        out.append((str(name), y, p))
    return out


def roc_figure(curves: Curves, *, title: str = "ROC curve", ax: Axes | None = None) -> Figure:
    """ROC curves of one or several detectors on one axes, AUC in the legend, chance diagonal.

    Lines: one per curve, then the diagonal.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = _axes(ax)
    for name, y, p in _checked_curves(curves):
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set(xlabel="false positive rate (REAL called FAKE)", ylabel="true positive rate (FAKE caught)",
           xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def pr_figure(curves: Curves, *, title: str = "Precision-recall curve (FAKE positive)",
              ax: Axes | None = None) -> Figure:
    """Precision-recall curves, average precision in the legend. Lines: one per curve."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = _axes(ax)
    for name, y, p in _checked_curves(curves):
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, drawstyle="steps-post",
                label=f"{name} (AP {average_precision_score(y, p):.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower left", fontsize="small")
    return fig


def confusion_figure(metrics: Mapping[str, Any] | None = None, *, labels: Any = None, preds: Any = None,
                     title: str | None = None, ax: Axes | None = None) -> Figure:
    """Confusion matrix from a metrics dict ("confusion" [[tn, fp], [fn, tp]]) or labels + 0/1 preds.

    Cells show the count and the share of their true class; colour is that share.
    """
    if (metrics is None) == (labels is None or preds is None):
        raise ValueError("confusion_figure: pass either a metrics dict or both labels and preds")
    if metrics is not None:
        if "confusion" not in metrics:
            raise ValueError("confusion_figure: metrics dict has no 'confusion' field")
        cm = np.asarray(metrics["confusion"], dtype=np.int64)
        if title is None and "threshold" in metrics:
            title = f"Confusion at threshold {metrics['threshold']:.3f}"
    else:
        y, pred, _ = _check_inputs(labels, preds)  # 0/1 preds pass the [0, 1] check
        if not np.isin(pred, (0, 1)).all():
            raise ValueError("confusion_figure: preds must be 0 (REAL) or 1 (FAKE)")
        cm = np.bincount(2 * y + pred.astype(np.int64), minlength=4).reshape(2, 2)
    if cm.shape != (2, 2):
        raise ValueError(f"confusion_figure: confusion must be 2x2, got shape {cm.shape}")
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = _axes(ax, (4.2, 3.8))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{cm[i, j]:,}\n{share[i, j]:.1%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks([0, 1], LABEL_NAMES)
    ax.set_yticks([0, 1], LABEL_NAMES)
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix")
    return fig


def histogram_figure(labels: Any, p_fake: Any, *, threshold: float | None = 0.5, bins: int = 50,
                     log: bool = False, title: str = "p_fake by true label", ax: Axes | None = None) -> Figure:
    """Histograms of p_fake for REAL and FAKE images (2 patches), the threshold as a vertical line."""
    y, p, _ = _check_inputs(labels, p_fake)
    fig, ax = _axes(ax, (6, 4))
    edges = np.linspace(0, 1, bins + 1)
    for label in (0, 1):
        ax.hist(p[y == label], bins=edges, histtype="stepfilled", alpha=0.5, color=COLORS[label],
                label=f"{LABEL_NAMES[label]} (n={int((y == label).sum()):,})", log=log)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="p_fake", ylabel="images", xlim=(0, 1), title=title)
    ax.legend(fontsize="small")
    return fig


def reliability_figure(labels: Any, p_fake: Any, *, p_calibrated: Any = None, n_bins: int = ECE_BINS,
                       calibrated_label: str = "after temperature scaling", title: str = "Reliability",
                       ax: Axes | None = None) -> Figure:
    """Reliability diagram: top-label accuracy against confidence per bin (as ECE counts them).

    Lines: the diagonal, the scores, and `p_calibrated` (e.g. apply_temperature output) when
    given. The title carries ECE (before -> after).
    """
    fig, ax = _axes(ax)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    series = [("scores", p_fake)] + ([(calibrated_label, p_calibrated)] if p_calibrated is not None else [])
    eces = []
    for name, p in series:
        bins = reliability_bins(labels, p, n_bins)
        full = bins["count"] > 0
        ece = expected_calibration_error(labels, p, n_bins)
        eces.append(ece)
        ax.plot(bins["confidence"][full], bins["accuracy"][full], marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set(xlabel="confidence of the predicted label", ylabel="accuracy", xlim=(0.45, 1.0), ylim=(0, 1.02),
           title=f"{title} (ECE {' → '.join(f'{e:.3f}' for e in eces)}, {n_bins} bins)")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def _lookup(row: Mapping[str, Any], key: str) -> Any:
    """row["a.b"] -> row["a"]["b"]: lets compare_bar use e.g. "natural_threshold.accuracy"."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def compare_bar(rows: Sequence[Mapping[str, Any]], metric: str = "roc_auc", *,
                published: Mapping[str, float] | None = None, title: str | None = None,
                ax: Axes | None = None) -> Figure:
    """Horizontal bars of `metric` for each row (metrics dicts with a "name"), 95% CI error bars.

    The CI comes from `<metric>_ci95` when the row has it; a missing value is drawn empty
    and marked n/a. `published` anchors ({label: value}) are dashed vertical lines marked
    "(published)", never bars. Patches: one bar per row.
    """
    if not rows:
        raise ValueError("compare_bar: no rows")
    names = [str(r.get("name") or r.get("detector") or f"row {i}") for i, r in enumerate(rows)]
    values = [_lookup(r, metric) for r in rows]
    fig, ax = _axes(ax, (6.5, 0.45 * len(rows) + 1.6))
    ypos = np.arange(len(rows))
    heights = [v if v is not None else 0.0 for v in values]
    ax.barh(ypos, heights, color="tab:blue", alpha=0.8)
    for i, r in enumerate(rows):
        ci = _lookup(r, f"{metric}_ci95")
        if values[i] is not None and ci is not None:
            ax.errorbar(values[i], i, xerr=[[values[i] - ci[0]], [ci[1] - values[i]]], fmt="none",
                        ecolor="black", capsize=3)
        text = f"{values[i]:.4f}" if values[i] is not None else "n/a"
        ax.text((ci[1] if values[i] is not None and ci else heights[i]) + 0.01, i, text, va="center",
                fontsize="small")
    for k, (label, value) in enumerate((published or {}).items()):
        ax.axvline(value, linestyle="--", linewidth=1, color=f"C{k + 1}", label=f"{label} (published)")
    if published:
        ax.legend(loc="lower right", fontsize="small")
    top = max([1.0] + [v for v in heights if v is not None])
    ax.set_yticks(ypos, names)
    ax.invert_yaxis()  # first row on top
    ax.set(xlim=(0, top * 1.15), xlabel=metric, title=title or f"{metric} (95% CI)")
    return fig


def metrics_figure(labels: Any, p_fake: Any, *, threshold: float = 0.5, name: str = "detector") -> Figure:
    """One overview panel for a single detector: ROC, histogram, confusion at `threshold`, reliability."""
    fig = Figure(figsize=(11, 9), layout="constrained")
    axes = fig.subplots(2, 2)
    roc_figure({name: (labels, p_fake)}, ax=axes[0, 0])
    histogram_figure(labels, p_fake, threshold=threshold, ax=axes[0, 1])
    confusion_figure(compute_metrics(labels, p_fake, threshold=threshold, n_boot=0), ax=axes[1, 0])
    reliability_figure(labels, p_fake, ax=axes[1, 1])
    fig.suptitle(name)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Write `fig` atomically; the format follows the suffix (.png, .pdf, .svg; default png)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
