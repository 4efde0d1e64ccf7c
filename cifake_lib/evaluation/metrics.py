"""Metrics for every stage: the `metrics.json` object, bootstrap CIs, thresholds, calibration.

Conventions (docs/architecture.md, "Label convention"): label 1 = FAKE is the positive class; a
detector predicts FAKE when `p_fake >= threshold`. The threshold is chosen on validation data
(`choose_threshold`) and only then applied to test data. Point metrics are computed here with numpy (the tests
check each against scikit-learn) so that the same code can run vectorised over bootstrap
resamples.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cifake_lib import CIFAR_CLASSES
from cifake_lib.core.files import atomic_write

ECE_BINS = 15
CI_LEVEL = 0.95
PREDICTION_COLUMNS = ("id", "label", "cifar_class", "p_fake")

# Fields of the metrics.json object, in the order they are written (docs/architecture.md, "The run folder").
METRIC_FIELDS = (
    "accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "ece", "brier",
    "threshold", "n", "n_real", "n_fake", "confusion", "accuracy_ci95", "roc_auc_ci95",
    "per_class_accuracy", "natural_threshold",
)
RECORD_FIELDS = METRIC_FIELDS + ("detector", "model", "data", "split", "seed", "created")


# --------------------------------------------------------------------------- input checks

def _check_inputs(labels: Any, p_fake: Any, classes: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate and convert: labels -> int64 0/1, p_fake -> float64 in [0, 1], classes -> int64 -1..9."""
    y = np.asarray(labels)
    p = np.asarray(p_fake)
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(f"labels and p_fake must be 1-D, got shapes {y.shape} and {p.shape}")
    if len(y) != len(p):
        raise ValueError(f"labels has {len(y)} items but p_fake has {len(p)}")
    if len(y) == 0:
        raise ValueError("no predictions: labels and p_fake are empty")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"labels must be 0 (REAL) or 1 (FAKE), got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise ValueError(f"labels must be 0 (REAL) or 1 (FAKE); found {np.unique(y[bad])[:5].tolist()}")
    y = y.astype(np.int64)
    if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer) or p.dtype == bool):
        raise ValueError(f"p_fake must be numeric probabilities, got dtype {p.dtype}")
    p = p.astype(np.float64)
    n_nan = int(np.isnan(p).sum())
    if n_nan:
        raise ValueError(f"p_fake contains {n_nan} NaN value(s)")
    if (p < 0).any() or (p > 1).any():  # also catches +-inf
        raise ValueError(f"p_fake must lie in [0, 1]; found values from {p.min():g} to {p.max():g}")
    c = None
    if classes is not None:
        c = np.asarray(classes)
        if c.shape != y.shape:
            raise ValueError(f"classes has shape {c.shape} but labels has {y.shape}")
        if not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"classes must be integers -1..9, got dtype {c.dtype}")
        if ((c < -1) | (c >= len(CIFAR_CLASSES))).any():
            raise ValueError(f"classes must lie in -1..{len(CIFAR_CLASSES) - 1}; found {c.min()}..{c.max()}")
        c = c.astype(np.int64)
    return y, p, c


def _check_threshold(threshold: Any) -> float:
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return t


def _none_if_nan(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------- threshold

def choose_threshold(labels: Any, p_fake: Any) -> float:
    """The threshold that maximises accuracy on (validation) data; predict FAKE when p >= it.

    Every distinct decision is considered: "all FAKE", "all REAL", and a cut between each
    pair of adjacent distinct scores. The threshold returned for a cut is the midpoint of the
    two scores around it (with 0 and 1 as the outer neighbours), not one of the scores, so
    that it does not sit right on a validation example and generalises to new scores.
    Ties in accuracy go to the threshold nearest 0.5 (the natural one), then to the lower.
    Call this on validation data only: choosing it on test data leaks the test labels.
    """
    y, p, _ = _check_inputs(labels, p_fake)
    u, inverse = np.unique(p, return_inverse=True)  # sorted distinct scores
    fake_g = np.bincount(inverse, weights=y, minlength=len(u))
    real_g = np.bincount(inverse, weights=1 - y, minlength=len(u))
    # Cut j predicts FAKE for p >= u[j]; j == len(u) predicts all REAL.
    fake_below = np.concatenate(([0.0], np.cumsum(fake_g)))
    real_below = np.concatenate(([0.0], np.cumsum(real_g)))
    correct = (fake_g.sum() - fake_below) + real_below
    lower = np.concatenate(([0.0], u))  # neighbour below each cut
    upper = np.concatenate((u, [1.0]))  # neighbour above each cut
    mid = (lower + upper) / 2
    # Adjacent floats can round their midpoint onto the lower score, which would flip it.
    fix = (np.arange(len(mid)) > 0) & (mid <= lower)
    mid[fix] = upper[fix]
    if u[-1] >= 1.0:  # "all REAL" needs a threshold above every score, so above 1
        mid[-1] = float(np.nextafter(1.0, 2.0))
    best = np.flatnonzero(correct == correct.max())
    # Nearest 0.5, then lower: lexsort sorts by the last key first.
    pick = best[np.lexsort((mid[best], np.abs(mid[best] - 0.5)))[0]]
    return float(mid[pick])


# --------------------------------------------------------------------------- point metrics

def _confusion(y: np.ndarray, pred: np.ndarray) -> list[list[int]]:
    cm = np.bincount(2 * y + pred, minlength=4).reshape(2, 2)
    return cm.tolist()  # [[tn, fp], [fn, tp]]


def _prf(confusion: list[list[int]]) -> tuple[float, float, float]:
    """Precision, recall, F1 for FAKE; 0.0 where undefined (scikit-learn's zero_division=0)."""
    (_, fp), (fn, tp) = confusion
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return float(precision), float(recall), float(f1)


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    if y.min() == y.max():
        return None  # undefined with one class present
    # The identity "resample" (every item once) gives the plain Mann-Whitney AUC.
    return float(_Resampler(y, p, [0.5])(np.arange(len(y))[None, :])[1][0])


def _average_precision(y: np.ndarray, p: np.ndarray) -> float | None:
    """Step-wise area under the precision-recall curve, as scikit-learn defines it."""
    if y.sum() == 0:
        return None  # no FAKE examples: recall is undefined
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    last = np.flatnonzero(np.concatenate((ps[1:] != ps[:-1], [True])))  # end of each tie group
    tps = np.cumsum(ys)[last]
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def expected_calibration_error(labels: Any, p_fake: Any, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE with `n_bins` equal-width bins over [0, 1] (Guo et al. 2017).

    The top label is the natural decision (FAKE when p >= 0.5) and its confidence
    max(p, 1 - p): ECE describes the probabilities themselves, so it does not depend on
    the tuned threshold. ECE = sum over bins of (bin share) * |accuracy - mean confidence|.
    Bins are right-closed, (lo, hi], the first also holds 0.
    """
    y, p, _ = _check_inputs(labels, p_fake)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, correct = _top_label(y, p)
    return float(_ece_from(conf, correct, n_bins))


def _top_label(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = (p >= 0.5).astype(np.int64)
    return np.maximum(p, 1 - p), (pred == y).astype(np.float64)


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)


def _ece_from(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    b = _bin_index(conf, n_bins)
    gap = np.bincount(b, weights=correct, minlength=n_bins) - np.bincount(b, weights=conf, minlength=n_bins)
    return float(np.abs(gap).sum() / len(conf))  # sum_b |n_b (acc_b - conf_b)| / n


def reliability_bins(labels: Any, p_fake: Any, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per-bin top-label statistics behind ECE: count, mean confidence, accuracy (NaN when empty)."""
    y, p, _ = _check_inputs(labels, p_fake)
    conf, correct = _top_label(y, p)
    b = _bin_index(conf, n_bins)
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(b, weights=correct, minlength=n_bins) / count
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "count": count, "confidence": mean_conf,
            "accuracy": accuracy}


# --------------------------------------------------------------------------- bootstrap

class _Resampler:
    """Accuracy at fixed thresholds and ROC AUC over bootstrap resamples, vectorised.

    Everything these statistics need is how often each (distinct score, label) pair occurs
    in a resample, so a batch of resamples becomes one bincount over those 2G keys, then
    a cumulative sum over scores for the Mann-Whitney AUC (ties count 1/2).
    """

    def __init__(self, y: np.ndarray, p: np.ndarray, thresholds: list[float]):
        u, g = np.unique(p, return_inverse=True)
        self.n, self.n_keys = len(y), 2 * len(u)
        self.key = 2 * g.ravel() + y  # key 2g + label, for distinct score u[g]
        label = np.tile([0, 1], len(u))
        score = np.repeat(u, 2)
        # correct[key, k]: does threshold k classify that (score, label) pair right?
        self.correct = np.stack([(score >= t).astype(np.int64) == label for t in thresholds], axis=1)
        self.correct = self.correct.astype(np.float64)

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """idx (B, n) item indices, one resample per row -> accuracy (B, k), ROC AUC (B,)."""
        b = len(idx)
        flat = self.key[idx] + (np.arange(b) * self.n_keys)[:, None]
        counts = np.bincount(flat.ravel(), minlength=b * self.n_keys).reshape(b, self.n_keys)
        counts = counts.astype(np.float64)
        acc = counts @ self.correct / idx.shape[1]
        neg, pos = counts[:, 0::2], counts[:, 1::2]
        neg_below = np.cumsum(neg, axis=1) - neg
        num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
        den = pos.sum(axis=1) * neg.sum(axis=1)
        auc = np.full(b, np.nan)
        np.divide(num, den, out=auc, where=den > 0)
        return acc, auc


def _bootstrap(y: np.ndarray, p: np.ndarray, thresholds: list[float], n_boot: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy at each threshold (n_boot, k) and ROC AUC (n_boot,) over seeded resamples.

    Each resample draws n indices with replacement; batches of about 2M draws keep memory small.
    """
    resample = _Resampler(y, p, thresholds)
    acc = np.empty((n_boot, len(thresholds)))
    auc = np.empty(n_boot)
    for rows, idx in _draw_batches(len(y), n_boot, seed):
        acc[rows], auc[rows] = resample(idx)
    return acc, auc


def _draw_batches(n: int, n_boot: int, seed: int) -> Iterator[tuple[slice, np.ndarray]]:
    """Seeded bootstrap draws in batches: (rows of the n_boot resamples, indices (b, n)).

    `numpy.random.default_rng(seed).integers(0, n, size=(b, n))` per batch of about 2M draws;
    the same (n, n_boot, seed) gives the same indices to every caller (paired resamples).
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        yield slice(start, start + b), rng.integers(0, n, size=(b, n))


def _percentile_ci(values: np.ndarray, level: float) -> list[float] | None:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def bootstrap_ci(labels: Any, p_fake: Any, *, threshold: float = 0.5, n_boot: int = 1000,
                 seed: int = 0, level: float = CI_LEVEL) -> dict[str, list[float] | None]:
    """Percentile-bootstrap confidence intervals: {"accuracy": [lo, hi], "roc_auc": [lo, hi] | None}.

    Resamples (with replacement, not stratified) the (label, p_fake) pairs `n_boot` times,
    seeded. Resamples that hold one class only are dropped for ROC AUC; it is None when
    both classes never occur. The threshold is held fixed: the interval covers sampling
    noise in the evaluation set, not in the threshold choice.
    """
    y, p, _ = _check_inputs(labels, p_fake)
    t = _check_threshold(threshold)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    acc, auc = _bootstrap(y, p, [t], n_boot, seed)
    return {"accuracy": _percentile_ci(acc[:, 0], level),
            "roc_auc": _percentile_ci(auc, level) if y.min() != y.max() else None}


# --------------------------------------------------------------------------- metrics.json

def _at_threshold(y: np.ndarray, p: np.ndarray, c: np.ndarray | None, t: float) -> dict[str, Any]:
    pred = (p >= t).astype(np.int64)
    confusion = _confusion(y, pred)
    precision, recall, f1 = _prf(confusion)
    per_class: dict[str, float] = {}
    if c is not None:
        right = pred == y
        for k, name in enumerate(CIFAR_CLASSES):
            mask = c == k
            if mask.any():
                per_class[name] = float(right[mask].mean())
    return {"accuracy": float((pred == y).mean()), "precision": precision, "recall": recall, "f1": f1,
            "confusion": confusion, "per_class_accuracy": per_class}


def compute_metrics(labels: Any, p_fake: Any, *, threshold: float = 0.5, classes: Any = None,
                    n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every metric of metrics.json (docs/architecture.md, "The run folder") for one split; FAKE (1) is
    the positive class.

    Headline figures (accuracy, precision, recall, f1, confusion, per_class_accuracy,
    accuracy_ci95) use `threshold`, which should come from validation data;
    `natural_threshold` repeats them at 0.5. roc_auc, average_precision, ece and brier do
    not depend on the threshold. Undefined figures (e.g. ROC AUC with one class) are None.
    CIs are seeded percentile bootstraps with `n_boot` resamples (n_boot=0: None).
    """
    y, p, c = _check_inputs(labels, p_fake, classes)
    t = _check_threshold(threshold)
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    head = _at_threshold(y, p, c, t)
    natural = _at_threshold(y, p, c, 0.5)
    acc_ci = nat_ci = auc_ci = None
    if n_boot:
        acc, auc = _bootstrap(y, p, [t, 0.5], n_boot, seed)
        acc_ci, nat_ci = _percentile_ci(acc[:, 0], CI_LEVEL), _percentile_ci(acc[:, 1], CI_LEVEL)
        auc_ci = _percentile_ci(auc, CI_LEVEL) if y.min() != y.max() else None
    conf, correct = _top_label(y, p)
    n_fake = int(y.sum())
    return {
        "accuracy": head["accuracy"],
        "precision": head["precision"],
        "recall": head["recall"],
        "f1": head["f1"],
        "roc_auc": _roc_auc(y, p),
        "average_precision": _average_precision(y, p),
        "ece": _ece_from(conf, correct, ECE_BINS),
        "brier": float(np.mean((p - y) ** 2)),
        "threshold": t,
        "n": len(y),
        "n_real": len(y) - n_fake,
        "n_fake": n_fake,
        "confusion": head["confusion"],
        "accuracy_ci95": acc_ci,
        "roc_auc_ci95": auc_ci,
        "per_class_accuracy": head["per_class_accuracy"],
        "natural_threshold": {
            "threshold": 0.5,
            "accuracy": natural["accuracy"],
            "precision": natural["precision"],
            "recall": natural["recall"],
            "f1": natural["f1"],
            "confusion": natural["confusion"],
            "accuracy_ci95": nat_ci,
            "per_class_accuracy": natural["per_class_accuracy"],
        },
        "n_boot": n_boot,
    }


def utc_now() -> str:
    """ISO 8601 UTC time to the second, e.g. 2026-05-01T12:00:00+00:00."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def metrics_record(labels: Any, p_fake: Any, *, threshold: float, classes: Any, detector: str,
                   model: str, data: str, split: str, seed: int, n_boot: int = 1000,
                   **extra: Any) -> dict[str, Any]:
    """The metrics.json object: compute_metrics + detector, model, data, split, seed, created.

    `seed` also seeds the bootstrap. `extra` fields (e.g. threshold_source, prompt_set)
    are appended; they may not overwrite a standard field.
    """
    record = compute_metrics(labels, p_fake, threshold=threshold, classes=classes, n_boot=n_boot, seed=seed)
    record.update(detector=str(detector), model=str(model), data=str(data), split=str(split),
                  seed=int(seed), created=utc_now())
    clash = sorted(set(extra) & set(record))
    if clash:
        raise ValueError(f"metrics_record: extra field(s) {clash} would overwrite standard fields")
    record.update(extra)
    return record


# --------------------------------------------------------------------------- temperature scaling

def _logit(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|, exact 0/1 at -inf/inf


def _nll(scale: float, z: np.ndarray, sign: np.ndarray) -> float:
    # -log sigmoid(sign * scale * z), via logaddexp for stability.
    return float(np.mean(np.logaddexp(0.0, -sign * scale * z)))


def fit_temperature(labels: Any, p_fake: Any, *, bounds: tuple[float, float] = (0.01, 100.0)) -> float:
    """Temperature T minimising validation NLL of sigmoid(logit(p_fake) / T).

    A 1-D golden-section search on log T within `bounds` (NLL is convex in 1/T, hence
    unimodal in log T). p is clipped to [1e-7, 1 - 1e-7] for the fit only, so that a
    saturated wrong prediction costs a large but finite loss. Fit on validation data.
    Returns 1.0 when every p is 0.5 (no temperature changes anything).
    """
    y, p, _ = _check_inputs(labels, p_fake)
    lo_t, hi_t = bounds
    if not 0 < lo_t < hi_t:
        raise ValueError(f"bounds must satisfy 0 < lo < hi, got {bounds}")
    z = _logit(np.clip(p, 1e-7, 1 - 1e-7))
    if not np.any(z):
        return 1.0
    sign = 2.0 * y - 1.0
    a, b = math.log(lo_t), math.log(hi_t)
    g = (math.sqrt(5) - 1) / 2

    def f(log_t: float) -> float:
        return _nll(math.exp(-log_t), z, sign)

    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(80):  # interval shrinks by 0.618 per step: far below 1e-9 in log T
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return float(math.exp((a + b) / 2))


def apply_temperature(p_fake: Any, temperature: float) -> np.ndarray:
    """sigmoid(logit(p_fake) / T): T > 1 softens, T < 1 sharpens; 0, 0.5 and 1 stay put."""
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    p = np.asarray(p_fake, dtype=np.float64)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("p_fake must lie in [0, 1] with no NaN")
    return _sigmoid(_logit(p) / t)


# --------------------------------------------------------------------------- predictions.csv

def write_predictions(path: str | os.PathLike, ids: Any, labels: Any, classes: Any, p_fake: Any) -> Path:
    """Write predictions.csv (`id,label,cifar_class,p_fake`), atomically.

    ids may hold spaces, commas, quotes (csv quoting handles them); p_fake is written with
    repr(), the shortest text that reads back to the same float64. classes None -> -1.
    """
    y, p, c = _check_inputs(labels, p_fake, classes)
    ids = [str(i) for i in np.asarray(ids, dtype=object).ravel()]
    if len(ids) != len(y):
        raise ValueError(f"{path}: ids has {len(ids)} items but labels has {len(y)}")
    if c is None:
        c = np.full(len(y), -1, dtype=np.int64)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(PREDICTION_COLUMNS)
            for row in zip(ids, y.tolist(), c.tolist(), map(repr, p.tolist()), strict=True):
                w.writerow(row)

    return atomic_write(path, write)


def read_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read predictions.csv -> {"id": str array, "label": int64, "cifar_class": int64, "p_fake": float64}."""
    path = Path(path)
    try:
        f = open(path, newline="", encoding="utf-8-sig")  # -sig: tolerate a BOM from spreadsheet exports
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected header {','.join(PREDICTION_COLUMNS)}")
        header = [h.strip() for h in header]
        missing = [col for col in PREDICTION_COLUMNS if col not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {header}, "
                             f"expected {','.join(PREDICTION_COLUMNS)}")
        pos = [header.index(col) for col in PREDICTION_COLUMNS]
        cols: list[list[str]] = [[] for _ in PREDICTION_COLUMNS]
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}: line {line} has {len(row)} fields, expected {len(header)}")
            for col, i in zip(cols, pos, strict=True):
                col.append(row[i])
    out: dict[str, np.ndarray] = {"id": np.array(cols[0], dtype=str)}
    for name, values, dtype in (("label", cols[1], np.int64), ("cifar_class", cols[2], np.int64),
                                ("p_fake", cols[3], np.float64)):
        try:
            out[name] = np.array(values, dtype=dtype) if values else np.empty(0, dtype=dtype)
        except ValueError as e:
            raise ValueError(f"{path}: column {name!r} holds a value that is not {np.dtype(dtype).name} ({e})") from None
    if len(out["label"]):
        try:
            _check_inputs(out["label"], out["p_fake"], out["cifar_class"])
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return out
