"""Paired tests for two detectors scored on the same test images.

Every detector of the study is scored on the same images, so a comparison is paired: the
question is whether the *difference* is larger than the sampling noise of that difference,
which overlapping per-detector intervals do not answer (they ignore the correlation).

- `paired_bootstrap`: percentile interval of a metric difference, both detectors evaluated on
  the SAME resampled indices (Efron & Tibshirani 1993, ch. 13).
- `mcnemar_exact`: McNemar's test for accuracy, exact form: under H0 the discordant pairs split
  50/50, so the count of one kind is Binomial(b + c, 1/2) (McNemar 1947).
- `delong_test`: DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837-845, for the
  difference of two correlated ROC AUCs, with the midrank algorithm of Sun & Xu (2014),
  IEEE Signal Processing Letters 21(11):1389-1393.
- `wilson_interval`: Wilson score interval of a proportion (small cells, e.g. per-class accuracy).

Label 1 = FAKE is the positive class; a detector predicts FAKE when p_fake >= its threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cifake_lib.evaluation.metrics import (
    CI_LEVEL,
    _check_inputs,
    _check_threshold,
    _draw_batches,
    _percentile_ci,
    _Resampler,
)

PAIRED_METRICS = ("accuracy", "roc_auc")


def _pair(labels: Any, p_a: Any, p_b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_a, n_b = len(np.ravel(p_a)), len(np.ravel(p_b))
    if n_a != n_b:
        raise ValueError(f"paired scores differ in length: {n_a} vs {n_b} (the same images are needed)")
    y, a, _ = _check_inputs(labels, p_a)
    _, b, _ = _check_inputs(labels, p_b)
    return y, a, b


def _paired_differences(y: np.ndarray, a: np.ndarray, b: np.ndarray, ta: float, tb: float, n_boot: int,
                        seed: int) -> dict[str, tuple[float, float, np.ndarray]]:
    """Per metric of PAIRED_METRICS: (value A, value B, A - B over each paired resample).

    One pass over the seeded draws (`metrics._draw_batches`) scores both detectors on the same
    indices; accuracy and ROC AUC come out of the same resample counts.
    """
    ra, rb = _Resampler(y, a, [ta]), _Resampler(y, b, [tb])
    (acc_a, auc_a), (acc_b, auc_b) = ra(np.arange(len(y))[None, :]), rb(np.arange(len(y))[None, :])
    diffs = {metric: np.empty(n_boot) for metric in PAIRED_METRICS}
    for rows, idx in _draw_batches(len(y), n_boot, seed):
        (boot_acc_a, boot_auc_a), (boot_acc_b, boot_auc_b) = ra(idx), rb(idx)
        diffs["accuracy"][rows] = boot_acc_a[:, 0] - boot_acc_b[:, 0]
        diffs["roc_auc"][rows] = boot_auc_a - boot_auc_b
    return {"accuracy": (float(acc_a[0, 0]), float(acc_b[0, 0]), diffs["accuracy"]),
            "roc_auc": (float(auc_a[0]), float(auc_b[0]), diffs["roc_auc"])}


def _interval(value_a: float, value_b: float, diffs: np.ndarray, level: float) -> dict[str, float | None]:
    """paired_bootstrap's result from the point values and the resampled differences."""
    point = {"value_a": value_a, "value_b": value_b}
    diffs = diffs[np.isfinite(diffs)]
    diff = value_a - value_b
    ci = _percentile_ci(diffs, level)
    if ci is None or not math.isfinite(diff):
        return {**point, "difference": None if not math.isfinite(diff) else diff, "ci_low": None,
                "ci_high": None, "se": None, "n_boot_used": len(diffs)}
    return {**point, "difference": diff, "ci_low": ci[0], "ci_high": ci[1],
            "se": float(diffs.std(ddof=1)) if len(diffs) > 1 else None, "n_boot_used": len(diffs)}


def paired_bootstrap(labels: Any, p_a: Any, p_b: Any, *, metric: str = "roc_auc", threshold_a: float = 0.5,
                     threshold_b: float = 0.5, n_boot: int = 2000, seed: int = 0,
                     level: float = CI_LEVEL) -> dict[str, float | None]:
    """Difference metric(A) - metric(B) with a percentile-bootstrap interval over paired resamples.

    Each resample draws n image indices with replacement (`numpy.random.default_rng(seed)
    .integers(0, n, size=(n_boot, n))`, drawn in chunks of rows) and scores BOTH detectors on
    those indices. Resamples holding one class only are left out for ROC AUC. Returns
    {"value_a", "value_b", "difference", "ci_low", "ci_high", "se", "n_boot_used"}.
    """
    if metric not in PAIRED_METRICS:
        raise ValueError(f"metric must be one of {PAIRED_METRICS}, got {metric!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    y, a, b = _pair(labels, p_a, p_b)
    ta, tb = _check_threshold(threshold_a), _check_threshold(threshold_b)
    return _interval(*_paired_differences(y, a, b, ta, tb, n_boot, seed)[metric], level)


def mcnemar_exact(labels: Any, p_a: Any, p_b: Any, *, threshold_a: float = 0.5,
                  threshold_b: float = 0.5) -> dict[str, float | int]:
    """McNemar's exact test of equal accuracy of two detectors on the same images.

    b: images A gets right and B wrong; c: the reverse. Two-sided p = min(1, 2 P(X <= min(b, c)))
    with X ~ Binomial(b + c, 1/2), which is `scipy.stats.binomtest(b, b + c, 0.5).pvalue`
    (the binomial is symmetric at 1/2). No discordant pair: p = 1. Returns {"b", "c", "p_value"}.
    """
    from scipy.stats import binom

    y, a, b_scores = _pair(labels, p_a, p_b)
    right_a = (a >= _check_threshold(threshold_a)).astype(np.int64) == y
    right_b = (b_scores >= _check_threshold(threshold_b)).astype(np.int64) == y
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    p = 1.0 if b + c == 0 else min(1.0, 2.0 * float(binom.cdf(min(b, c), b + c, 0.5)))
    return {"b": b, "c": c, "p_value": p}


def _placements(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs (k,), positive placements V10 (k, m) and negative placements V01 (k, n) by midranks."""
    from scipy.stats import rankdata

    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # midranks: ties count 1/2
    tx, ty = rankdata(pos, axis=1), rankdata(neg, axis=1)
    v10 = (tz[:, :m] - tx) / n  # per positive: share of negatives scored below it
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives scored above it
    return v10.mean(axis=1), v10, v01


def delong_test(labels: Any, p_a: Any, p_b: Any) -> dict[str, float | None]:
    """DeLong's test of equal ROC AUC for two detectors scored on the same images.

    Returns {"auc_a", "auc_b", "difference", "se", "z", "p_value"} (two-sided, normal
    approximation). Identical rankings give se 0 and p 1. Needs both classes.
    """
    from scipy.stats import norm

    y, a, b = _pair(labels, p_a, p_b)
    m, n = int(y.sum()), int(len(y) - y.sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs both REAL and FAKE images")
    aucs, v10, v01 = _placements(y, np.stack([a, b]))
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((2, 2))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-15:
        return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff, "se": 0.0,
                "z": 0.0 if abs(diff) < 1e-12 else math.copysign(math.inf, diff),
                "p_value": 1.0 if abs(diff) < 1e-12 else 0.0}
    se = math.sqrt(var)
    z = diff / se
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff, "se": se, "z": z,
            "p_value": float(2 * norm.sf(abs(z)))}


def wilson_interval(successes: int, n: int, level: float = CI_LEVEL) -> tuple[float, float] | None:
    """Wilson score interval of a proportion successes/n (Wilson 1927); None when n is 0."""
    from scipy.stats import norm

    if n <= 0:
        return None
    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def compare_pair(labels: Any, p_a: Any, p_b: Any, *, threshold_a: float, threshold_b: float,
                 n_boot: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Rows for paired_comparisons.csv (without detector names), one per metric of PAIRED_METRICS.

    accuracy: at each detector's own (validation-chosen) threshold, McNemar's exact p;
    roc_auc: DeLong's p. Intervals: paired bootstrap.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    y, a, b = _pair(labels, p_a, p_b)
    ta, tb = _check_threshold(threshold_a), _check_threshold(threshold_b)
    differences = _paired_differences(y, a, b, ta, tb, n_boot, seed)  # one pass for both metrics
    rows = []
    for metric in PAIRED_METRICS:
        boot = _interval(*differences[metric], CI_LEVEL)
        if metric == "accuracy":
            test = mcnemar_exact(labels, p_a, p_b, threshold_a=threshold_a, threshold_b=threshold_b)
            name = "McNemar exact"
        else:
            test = delong_test(labels, p_a, p_b) if len(np.unique(labels)) == 2 else {"p_value": None}
            name = "DeLong"
        rows.append({"metric": metric, "value_a": boot["value_a"], "value_b": boot["value_b"],
                     "difference": boot["difference"], "ci_low": boot["ci_low"], "ci_high": boot["ci_high"],
                     "p_value": test["p_value"], "test": name, "n": len(np.asarray(labels))})
    return rows


__all__ = ["PAIRED_METRICS", "paired_bootstrap", "mcnemar_exact", "delong_test", "wilson_interval",
           "compare_pair"]
