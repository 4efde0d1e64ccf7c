"""Figures of what methods cost and where the signal sits: the layer-wise probe's ROC AUC by vision
block, and the efficiency frontier (test ROC AUC against trainable parameters and training time)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter


def _errors(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Values and asymmetric error bars (2, n) from `key` and `key`_ci95 = [lo, hi] (0 where absent)."""
    values = np.array([float(r[key]) if r.get(key) is not None else np.nan for r in rows])
    err = np.zeros((2, len(rows)))
    for i, r in enumerate(rows):
        ci = r.get(f"{key}_ci95")
        if ci and None not in ci and np.isfinite(values[i]):
            err[:, i] = [max(0.0, values[i] - ci[0]), max(0.0, ci[1] - values[i])]
    return values, err


def layers_figure(rows: Sequence[Mapping[str, Any]], *, title: str = "Layer-wise linear probe") -> Figure:
    """Validation and test ROC AUC (95% bootstrap CIs) of the probe on each vision block's class token."""
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    layers = np.array([int(r["layer"]) for r in rows])
    for key, label, shift, marker in (("val_roc_auc", "validation", -0.12, "o"), ("test_roc_auc", "test", 0.12, "s")):
        values, err = _errors(rows, key)
        ax.errorbar(layers + shift, values, yerr=err, marker=marker, capsize=3, linestyle="-", label=label)
    chosen = [r for r in rows if r.get("chosen")]
    if chosen:
        ax.axvline(int(chosen[0]["layer"]), color="0.6", linestyle=":", label="chosen on validation")
    ax.set_xlabel("vision block (class token after the final layer norm)")
    ax.set_ylabel("ROC AUC (95% CI)")
    ax.set_xticks(layers)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return fig


MARKERS = "osD^v<>pPXh*"


def _dodge(xs: Sequence[float]) -> list[float]:
    """x positions with points that share one spread apart (a few percent on a log axis, a little
    around 0), so that methods of equal cost (the probe and its layer-wise twin) stay visible."""
    out = list(xs)
    groups: dict[float, list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault(round(float(x), 6), []).append(i)
    for x, idx in groups.items():
        for k, i in enumerate(idx):
            shift = k - (len(idx) - 1) / 2
            out[i] = x * 1.3 ** shift if x > 0 else 0.15 * shift
    return out


def frontier_figure(rows: Sequence[Mapping[str, Any]], *, title: str = "Accuracy against cost") -> Figure:
    """Test ROC AUC against trainable parameters and training seconds, one point per method.

    rows: {"method", "trainable_params", "train_seconds", "test_roc_auc", "test_roc_auc_ci95"?}. Both
    axes are logarithmic above 1 and linear below (symlog), so a method that trains nothing (zero-shot:
    0 parameters, 0 s) sits at 0 on the same figure; methods of equal cost are spread a little apart.
    """
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    values, err = _errors(rows, "test_roc_auc")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    style = {m: (f"C{i % 10}", MARKERS[i % len(MARKERS)]) for i, m in enumerate(methods)}
    for ax, key, label in ((axes[0], "trainable_params", "trainable parameters (0, then log)"),
                           (axes[1], "train_seconds", "training seconds (0, then log)")):
        shown = [i for i, r in enumerate(rows) if r.get(key) is not None and np.isfinite(values[i])]
        xs = _dodge([max(0.0, float(rows[i][key])) for i in shown])
        for x, i in zip(xs, shown, strict=True):
            color, marker = style[rows[i]["method"]]
            ax.errorbar([x], [values[i]], yerr=err[:, i:i + 1], marker=marker, capsize=3, color=color,
                        label=rows[i]["method"], linestyle="none")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=-0.5)
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels crowd a short log range
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test ROC AUC (95% CI)")
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        fig.legend(unique.values(), unique.keys(), loc="outside right center", fontsize="small")
    fig.suptitle(title)
    return fig


__all__ = ["frontier_figure", "layers_figure"]
