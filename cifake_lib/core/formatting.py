"""One way to print a metric: the same text in notebooks, command-line lines and report.md."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MISSING = "–"


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def format_value(v: Any, *, percent: bool = False, digits: int = 4) -> str:
    """`0.9123` -> "0.9123"; with `percent`, "91.23%" (digits - 2 decimals); None/NaN -> "–"."""
    try:
        v = float(v) if v is not None else None
    except (TypeError, ValueError):
        return str(v)
    if not _finite(v):
        return MISSING
    return f"{v:.{max(digits - 2, 0)}%}" if percent else f"{v:.{digits}f}"


def format_p(p: float | None) -> str:
    """A p-value as text: 4 decimals, or "< 0.0001"."""
    if p is None:
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def format_metric(value: Any, ci: Sequence[Any] | None = None, *, percent: bool = False,
                  digits: int = 4) -> str:
    """A metric with its 95% interval: "0.6418 [0.5681, 0.7196]" or "57.50% [50.50%, 64.50%]".

    The interval is printed with the value's own precision, so the three numbers read alike.
    """
    text = format_value(value, percent=percent, digits=digits)
    if ci is None or len(ci) != 2 or not all(_finite(_as_float(c)) for c in ci):
        return text
    lo, hi = (format_value(c, percent=percent, digits=digits) for c in ci)
    return f"{text} [{lo}, {hi}]"


def _as_float(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# How a metrics.json key reads in figures and tables ("roc_auc" -> "ROC AUC").
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "natural_threshold.accuracy": "Accuracy at p_fake ≥ 0.5",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "natural_threshold.roc_auc": "ROC AUC",
    "average_precision": "Average precision",
    "ece": "ECE (15 bins)",
    "brier": "Brier score",
    "threshold": "Threshold",
}


def metric_label(key: str) -> str:
    """A metrics.json key as a human label: "roc_auc" -> "ROC AUC"; unknown keys lose their underscores."""
    return METRIC_LABELS.get(key) or key.replace("natural_threshold.", "").replace("_", " ")
