"""The learning-curve figure: test ROC AUC and accuracy against training-set size, one line per method.

Rows are `analysis.learning_curves.curve_points` rows: {"method", "train_size", "roc_auc",
"roc_auc_lo", "roc_auc_hi", "accuracy", "accuracy_lo", "accuracy_hi", "n_runs"}. The x axis
is logarithmic (sizes such as 320, 1,000, 4,000, 16,000 are roughly evenly spaced on it); the
error bars are what the rows carry (a bootstrap 95% CI for one run, the range over seeds for
several), said in the caption that the report writes beside the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

__all__ = ["learning_curve_figure"]

PANELS = (("roc_auc", "test ROC AUC"), ("accuracy", "test accuracy (val threshold)"))


def learning_curve_figure(rows: Sequence[Mapping[str, Any]], *, title: str = "Learning curves") -> Figure:
    """Two panels (ROC AUC, accuracy) against training-set size, log x, one line per method family."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    methods = sorted({str(r["method"]) for r in rows})
    sizes = sorted({int(r["train_size"]) for r in rows})
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        for k, method in enumerate(methods):
            pts = sorted((r for r in rows if r["method"] == method and r.get(key) is not None),
                         key=lambda r: r["train_size"])
            if not pts:
                continue
            x = [int(r["train_size"]) for r in pts]
            y = [float(r[key]) for r in pts]
            lo = [max(0.0, yi - float(r.get(f"{key}_lo", yi))) for yi, r in zip(y, pts, strict=True)]
            hi = [max(0.0, float(r.get(f"{key}_hi", yi)) - yi) for yi, r in zip(y, pts, strict=True)]
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", ms=4, capsize=3, color=f"C{k}", label=method)
        ax.set_xscale("log")
        if sizes:
            ax.set_xticks(sizes)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(round(v)):,}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.set_xlim(sizes[0] / 1.4, sizes[-1] * 1.4)
        ax.set_xlabel("training images (log scale)")
        ax.set_ylabel(label)
        ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    if methods:
        axes[1].legend(loc="best", fontsize=8, title="method")
    fig.suptitle(title)
    return fig
