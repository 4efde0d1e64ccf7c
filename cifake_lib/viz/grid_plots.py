"""Figures along one axis of the study grid: a metric per method against the axis's values.

Rows come from `analysis.grid.axis_rows`: one per (method, value), with the mean over training
seeds and an interval (one run's bootstrap 95% CI; the sd over seeds when no CI was recorded).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from cifake_lib.core.formatting import metric_label

AXIS_LABELS = {"train_size": "training images", "model": "backbone", "seed": "training seed"}


def axis_figure(rows: Sequence[Mapping[str, Any]], axis: str, metrics: Sequence[str] = ("roc_auc", "accuracy"),
                *, title: str = "") -> Figure:
    """One panel per metric: each method's mean against the axis (log x for training-set size),
    with error bars (a run's bootstrap 95% CI, else the sd over seeds)."""
    numeric = axis == "train_size"
    sizes = [float(r["value"]) for r in rows if numeric and str(r["value"]).isdigit()]
    # the whole training split ("all") sits right of the largest subset, labelled as such
    place = {"all": 2 * max(sizes) if sizes else 1.0}

    def x_of(v: Any) -> float:
        return place[v] if v in place else float(v)

    order = {r["value"]: r.get("order", 0) for r in rows}  # the grid's order, as the table lists them
    values = sorted(order, key=lambda v: (x_of(v) if numeric else (order[v], str(v))))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig = Figure(figsize=(5.2 * len(metrics), 4.2), layout="constrained")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for k, method in enumerate(methods):
            mine = sorted((r for r in rows if r["method"] == method and r.get(metric) is not None),
                          key=lambda r: values.index(r["value"]))
            if not mine:
                continue
            # a category axis (backbones, input sizes) gets unjoined markers, dodged apart: no line runs
            # through a value a method skipped; a size axis joins its points (a learning curve)
            dodge = 0.0 if numeric else (k - (len(methods) - 1) / 2) * 0.08
            x = [x_of(r["value"]) if numeric else values.index(r["value"]) + dodge for r in mine]
            y = [r[metric] for r in mine]
            err = [[max(0.0, r[metric] - r[f"{metric}_lo"]) for r in mine],
                   [max(0.0, r[f"{metric}_hi"] - r[metric]) for r in mine]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method, linestyle="-" if numeric else "none")
        if numeric:
            ax.set_xscale("log")
            ax.set_xticks([x_of(v) for v in values], [str(v) if v in place else f"{int(v):,}" for v in values])
            ax.minorticks_off()
        else:
            ax.set_xticks(range(len(values)), [str(v) for v in values], rotation=20, ha="right")
        ax.set_xlabel(AXIS_LABELS.get(axis, axis))
        ax.set_ylabel(f"test {metric_label(metric)}")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
    return fig


__all__ = ["AXIS_LABELS", "axis_figure"]
