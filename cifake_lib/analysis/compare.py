"""Every detector side by side: comparison, per-CIFAR-class and calibration tables.

Inputs are run folders (runs.py) and nothing else: `load_runs(paths)` reads the test
`metrics.json` (plus predictions and validation files) of each run found under `paths`.
Rules that keep the comparison honest:

- a zero-shot detector is shown with ONE prompt set per CLIP model, the one with the best
  VALIDATION ROC AUC (then accuracy) from `metrics_val.json`; test figures never choose it;
- published results are separate rows with `source = "published"`, never mixed into ours;
- every figure at a threshold uses the detector's own threshold (chosen on validation).

Tables are lists of dicts (one per row); `markdown_table` and `fileio.write_csv` render them.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cifake_lib import CIFAR_CLASSES, LABEL_NAMES
from cifake_lib.evaluation.metrics import (
    CI_LEVEL,
    ECE_BINS,
    _check_inputs,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
)
from cifake_lib.evaluation.runs import find_runs, read_run


def comparison_key(compared: str) -> str:
    """The comparison-row key of what a published figure is compared with (published.compared_with):
    "acc@0.5" -> "accuracy_at_0.5", the column of accuracy at p_fake >= 0.5; others stay as they are."""
    return "accuracy_at_0.5" if compared == "acc@0.5" else compared


def published_rows() -> list[dict[str, Any]]:
    """The published results (evaluation/published.toml) as table rows, source "published".

    The metric's cell holds the figure as published ("92.98%", "≈95%"), never a re-rounded
    number; "reference" is the short citation (authors and year).
    """
    from cifake_lib.evaluation.published import cite, compared_with, published_results

    rows = []
    for e in published_results():
        row: dict[str, Any] = {"name": f"{e['name']} ({cite(e)})", "source": "published", "reference": cite(e),
                               "setting": e["setting"], "split": e["split"]}
        row[comparison_key(compared_with(e))] = e["text"]
        rows.append(row)
    return rows


# Columns of the comparison table: (key, header, kind); kind "ci" prints `value [lo, hi]`.
COMPARISON_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("name", "detector", "text"),
    ("source", "source", "text"),
    ("accuracy", "accuracy", "ci"),
    ("accuracy_at_0.5", "acc@0.5", "num"),
    ("precision", "precision", "ci"),
    ("recall", "recall", "ci"),
    ("f1", "F1", "ci"),
    ("roc_auc", "ROC AUC", "ci"),
    ("average_precision", "AP", "ci"),
    ("ece", "ECE", "ci"),
    ("threshold", "threshold", "num"),
    ("n", "n test", "int"),
)
BOOT_METRICS = ("precision", "recall", "f1", "average_precision", "ece")


# --------------------------------------------------------------------------- reading runs

def load_runs(paths: str | os.PathLike | Iterable[str | os.PathLike], *,
              predictions: bool = True) -> list[dict[str, Any]]:
    """Read every run folder under `paths` (runs.find_runs) -> read_run dicts with a "name".

    Only the given paths are searched; names are unique (see `name_runs`).
    """
    runs = [read_run(p, predictions=predictions) for p in find_runs(paths)]
    return name_runs(runs)


def _short_model(model: str) -> str:
    return Path(str(model).rstrip("/")).name or str(model)


def name_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each run a display "name": its detector, plus the model, then the folder, when needed."""
    def base(r: dict) -> str:
        return str(r["metrics"].get("detector", "?"))

    counts: dict[str, int] = {}
    for r in runs:
        counts[base(r)] = counts.get(base(r), 0) + 1
    names = []
    for r in runs:
        name = base(r)
        if counts[name] > 1:
            name = f"{name} ({_short_model(r['metrics'].get('model', ''))})"
        names.append(name)
    for depth in (1, 2, 3):  # same detector and model: the folder (then its parents) tells them apart
        dup = [i for i in range(len(runs)) if names.count(names[i]) > 1]
        if not dup:
            break
        for i in dup:
            base_name = names[i].split(" [")[0]
            names[i] = f"{base_name} [{'/'.join(Path(runs[i]['path']).parts[-depth:])}]"
    seen: dict[str, int] = {}
    for i, r in enumerate(runs):
        seen[names[i]] = seen.get(names[i], 0) + 1
        r["name"] = names[i] if seen[names[i]] == 1 else f"{names[i]} #{seen[names[i]]}"
    return runs


def is_zeroshot(run: Mapping[str, Any]) -> bool:
    return str(run["metrics"].get("detector", "")).startswith("zeroshot")


def _val_key(run: Mapping[str, Any]) -> tuple[float, float]:
    mv = run.get("metrics_val") or {}
    auc, acc = mv.get("roc_auc"), mv.get("accuracy")
    return (auc if auc is not None else -1.0, acc if acc is not None else -1.0)


def select_runs(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Keep one zero-shot run per CLIP model: the best prompt set on VALIDATION AUC, then accuracy.

    Returns (selected runs in their given order, notes saying what was chosen and why).
    Zero-shot runs without metrics_val.json cannot be ranked honestly: they are all kept,
    with a note. Non-zero-shot runs are kept as they are.
    """
    notes: list[str] = []
    groups: dict[str, list[dict]] = {}
    for r in runs:
        if is_zeroshot(r):
            groups.setdefault(str(r["metrics"].get("model", "")), []).append(r)
    dropped: set[int] = set()
    for model, group in groups.items():
        if len(group) < 2:
            continue
        ranked = [r for r in group if r.get("metrics_val")]
        if len(ranked) < len(group):
            notes.append(f"zero-shot ({_short_model(model)}): {len(group) - len(ranked)} prompt set(s) "
                         "have no validation metrics, so no prompt set was chosen; all are shown")
            continue
        best = max(ranked, key=_val_key)
        auc, acc = _val_key(best)
        notes.append(f"zero-shot ({_short_model(model)}): prompt set {best['metrics']['detector']!r} "
                     f"chosen among {len(group)} on validation (AUC {auc:.4f}, accuracy {acc:.4f})")
        dropped |= {id(r) for r in group if r is not best}
    return [r for r in runs if id(r) not in dropped], notes


# --------------------------------------------------------------------------- bootstrap CIs

def bootstrap_cis(labels: Any, p_fake: Any, *, threshold: float, n_boot: int = 1000, seed: int = 0,
                  level: float = CI_LEVEL, chunk: int = 50) -> dict[str, list[float] | None]:
    """Percentile-bootstrap CIs of precision, recall, F1, average precision and ECE.

    (metrics.json already holds the accuracy and ROC AUC intervals.) A resample with
    replacement is a vector of multinomial counts, so every metric is computed as a
    count-weighted metric of the original data, all resamples at once (in chunks).
    Undefined values in a resample (e.g. no predicted FAKE) are left out; a metric
    undefined in every resample gets None.
    """
    y, p, _ = _check_inputs(labels, p_fake)
    n = len(y)
    rng = np.random.default_rng(seed)
    pred = p >= float(threshold)
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order].astype(np.float64), p[order]
    last = np.r_[ps[1:] != ps[:-1], True]  # last position of each distinct score (ties grouped)
    conf = np.maximum(p, 1 - p)
    correct = ((p >= 0.5) == (y == 1)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    bins = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, ECE_BINS - 1)
    onehot = np.zeros((n, ECE_BINS))
    onehot[np.arange(n), bins] = 1.0
    out: dict[str, list[np.ndarray]] = {k: [] for k in BOOT_METRICS}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)  # (b, n)
        tp = w @ (pred & (y == 1)).astype(np.float64)
        fp = w @ (pred & (y == 0)).astype(np.float64)
        fn = w @ (~pred & (y == 1)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = tp / (tp + fp)
            rec = tp / (tp + fn)
            f1 = 2 * tp / (2 * tp + fp + fn)
            ws = w[:, order]
            tps = np.cumsum(ws * ys, axis=1)[:, last]
            fps = np.cumsum(ws * (1 - ys), axis=1)[:, last]
            precision_curve = tps / (tps + fps)
            recall_curve = tps / tps[:, -1:]
            ap = np.sum(np.diff(recall_curve, axis=1, prepend=0.0) * np.nan_to_num(precision_curve), axis=1)
            ap[tps[:, -1] == 0] = np.nan
            gap = (w * correct) @ onehot - (w * conf) @ onehot
            ece = np.abs(gap).sum(axis=1) / n
        for k, v in zip(BOOT_METRICS, (prec, rec, f1, ap, ece), strict=True):
            out[k].append(v)
    result: dict[str, list[float] | None] = {}
    for k, parts in out.items():
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]
        result[k] = (None if len(v) == 0 else
                     [float(x) for x in np.percentile(v, [50 * (1 - level), 50 * (1 + level)])])
    return result


# --------------------------------------------------------------------------- comparison table

def comparison_rows(runs: Sequence[Mapping[str, Any]], *, published: bool = True, n_boot: int = 1000,
                    seed: int = 0) -> list[dict[str, Any]]:
    """One row per run (source "ours") from its metrics.json, then the published anchors.

    Accuracy and ROC AUC CIs come from metrics.json; the CIs of precision, recall, F1, AP
    and ECE are bootstrapped here from predictions.csv when the run has it (n_boot=0: none).
    """
    rows = []
    for r in runs:
        m = r["metrics"]
        row = {"name": r.get("name") or m.get("detector"), "source": "ours", "detector": m.get("detector"),
               "model": m.get("model"), "path": str(r.get("path", ""))}
        for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "ece",
                    "brier", "threshold", "n", "n_real", "n_fake"):
            row[key] = m.get(key)
        # The natural threshold: what a detector gives with no labelled data to tune on.
        row["accuracy_at_0.5"] = (m.get("natural_threshold") or {}).get("accuracy")
        row["accuracy_ci95"] = m.get("accuracy_ci95")
        row["roc_auc_ci95"] = m.get("roc_auc_ci95")
        preds = r.get("predictions")
        if n_boot and preds is not None and len(preds["label"]):
            cis = bootstrap_cis(preds["label"], preds["p_fake"], threshold=m["threshold"], n_boot=n_boot,
                                seed=seed)
            row.update({f"{k}_ci95": v for k, v in cis.items()})
        rows.append(row)
    if published:
        rows += published_rows()
    return rows


def best_by(rows: Sequence[Mapping[str, Any]], metric: str = "roc_auc") -> dict[str, Any] | None:
    """Our row with the highest `metric` (published rows never count), or None."""
    ours = [r for r in rows if r.get("source") == "ours" and isinstance(r.get(metric), (int, float))]
    return dict(max(ours, key=lambda r: r[metric])) if ours else None


def ci_overlaps(a: Mapping[str, Any], b: Mapping[str, Any], metric: str = "roc_auc") -> bool | None:
    """Whether the 95% CIs of `metric` of two rows overlap (None when either lacks one)."""
    ca, cb = a.get(f"{metric}_ci95"), b.get(f"{metric}_ci95")
    if not ca or not cb:
        return None
    return bool(ca[0] <= cb[1] and cb[0] <= ca[1])


# --------------------------------------------------------------------------- per-class results

def per_class_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy on REAL and on FAKE test images of each CIFAR class, per detector.

    From predictions.csv at the detector's own threshold. Rows: name, cifar_class,
    real_accuracy, fake_accuracy, n_real, n_fake (accuracy None where n is 0). Runs without
    predictions or class information contribute no rows.
    """
    rows = []
    for r in runs:
        preds = r.get("predictions")
        if preds is None:
            continue
        t = float(r["metrics"]["threshold"])
        y, c = preds["label"], preds["cifar_class"]
        right = (preds["p_fake"] >= t).astype(np.int64) == y
        for k, cls in enumerate(CIFAR_CLASSES):
            row: dict[str, Any] = {"name": r.get("name") or r["metrics"].get("detector"), "cifar_class": cls}
            for label, word in enumerate(("real", "fake")):
                mask = (c == k) & (y == label)
                row[f"n_{word}"] = int(mask.sum())
                row[f"{word}_accuracy"] = float(right[mask].mean()) if mask.any() else None
            if row["n_real"] or row["n_fake"]:
                rows.append(row)
    return rows


def per_class_heatmap(rows: Sequence[Mapping[str, Any]], *, title: str = "Accuracy per CIFAR class") -> Figure:
    """Two heatmaps (REAL, FAKE): detectors x CIFAR classes, cells annotated with the accuracy."""
    if not rows:
        raise ValueError("per_class_heatmap: no rows (do the runs have predictions with CIFAR classes?)")
    names = list(dict.fromkeys(r["name"] for r in rows))
    classes = [c for c in CIFAR_CLASSES if any(r["cifar_class"] == c for r in rows)]
    fig = Figure(figsize=(1.0 + 0.62 * len(classes) * 2, 1.4 + 0.42 * len(names)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, word, label in zip(axes, ("real", "fake"), LABEL_NAMES, strict=True):
        grid = np.full((len(names), len(classes)), np.nan)
        for r in rows:
            v = r.get(f"{word}_accuracy")
            if v is not None:
                grid[names.index(r["name"]), classes.index(r["cifar_class"])] = v
        im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for i in range(len(names)):
            for j in range(len(classes)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize="x-small")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_title(f"{label} images")
    fig.colorbar(im, ax=axes, shrink=0.8, label="accuracy")
    fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------- calibration

def calibration_change_cis(labels: Any, p_before: Any, p_after: Any, *, n_boot: int = 1000,
                           seed: int = 0) -> dict[str, list[float] | None]:
    """Paired percentile-bootstrap 95% intervals of ECE(after) - ECE(before) and of the Brier
    difference: both scores of one detector evaluated on the SAME resampled test images.
    {"ece_change_ci95": [lo, hi], "brier_change_ci95": [lo, hi]} (None when n_boot is 0)."""
    y, a, _ = _check_inputs(labels, p_before)
    b = np.asarray(p_after, dtype=np.float64)
    if n_boot < 1 or len(y) < 2:
        return {"ece_change_ci95": None, "brier_change_ci95": None}
    rng = np.random.default_rng([int(seed), 0xCA1])
    ece, brier = np.empty(n_boot), np.empty(n_boot)
    for k in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        ece[k] = expected_calibration_error(y[i], b[i]) - expected_calibration_error(y[i], a[i])
        brier[k] = np.mean((b[i] - y[i]) ** 2) - np.mean((a[i] - y[i]) ** 2)
    alpha = (1 - CI_LEVEL) / 2
    return {f"{name}_change_ci95": [float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha))]
            for name, d in (("ece", ece), ("brier", brier))}


def calibration_rows(runs: Sequence[Mapping[str, Any]], *, n_boot: int = 1000,
                     seed: int = 0) -> list[dict[str, Any]]:
    """Temperature scaling fitted on validation predictions; test ECE and Brier before and after,
    with paired bootstrap intervals of both changes (`calibration_change_cis`).

    Runs without predictions_val.csv get no temperature (fitting it on test would cheat):
    their row has only the "before" figures. AUC and accuracy at 0.5 do not change
    (the map is monotone and fixes 0.5).
    """
    rows = []
    for r in runs:
        preds, val = r.get("predictions"), r.get("predictions_val")
        if preds is None:
            continue
        y, p = preds["label"], preds["p_fake"]
        row: dict[str, Any] = {"name": r.get("name") or r["metrics"].get("detector"),
                               "ece_before": expected_calibration_error(y, p),
                               "brier_before": float(np.mean((p - y) ** 2)),
                               "temperature": None, "ece_after": None, "brier_after": None, "sd_after": None,
                               "verdict": "no validation predictions: not fitted"}
        if val is not None and len(val["label"]):
            t = fit_temperature(val["label"], val["p_fake"])
            q = apply_temperature(p, t)
            row.update(temperature=t, ece_after=expected_calibration_error(y, q),
                       brier_after=float(np.mean((q - y) ** 2)), sd_after=float(np.std(q)),
                       **calibration_change_cis(y, p, q, n_boot=n_boot, seed=seed))
            row["verdict"] = calibration_verdict(row)
        rows.append(row)
    return rows


UNINFORMATIVE_SD = 0.01


def _change(row: Mapping[str, Any], metric: str) -> str:
    """"lower" / "higher" when the paired interval of the change excludes 0, else "unchanged"."""
    ci = row.get(f"{metric}_change_ci95")
    if ci is None:
        return "lower" if row[f"{metric}_after"] < row[f"{metric}_before"] else "not lower"
    return "lower" if ci[1] < 0 else "higher" if ci[0] > 0 else "not distinguishable"


def calibration_verdict(row: Mapping[str, Any]) -> str:
    """What temperature scaling did, in words. A temperature that squeezes every test score to
    nearly one value (sd < 0.01) makes a constant predictor: a low ECE then says nothing, so
    that case is "uninformative", never an improvement. With the paired bootstrap intervals of
    the changes (`calibration_change_cis`), "lower"/"higher" means the 95% interval excludes 0;
    without them the words are descriptive and say so."""
    if row.get("sd_after") is not None and row["sd_after"] < UNINFORMATIVE_SD:
        return f"uninformative: scaled scores nearly constant (sd {row['sd_after']:.4f})"
    if row.get("ece_after") is None:
        return "not fitted"
    tested = row.get("ece_change_ci95") is not None and row.get("brier_change_ci95") is not None
    ece, brier = _change(row, "ece"), _change(row, "brier")
    text = f"ECE and Brier {ece}" if ece == brier else f"ECE {ece}, Brier {brier}"
    return text + (" (paired bootstrap 95% CI)" if tested else " (descriptive: no interval)")


def reliability_grid(runs: Sequence[Mapping[str, Any]], calibration: Sequence[Mapping[str, Any]]) -> Figure:
    """Reliability diagrams of every run with predictions: test scores before and after temperature scaling.

    `calibration` is `calibration_rows(runs)`: one row per run with predictions, in order, holding
    the fitted temperature (None: not fitted) and the verdict, so nothing is refitted here.
    """
    from cifake_lib.viz.plots import reliability_figure

    runs = [r for r in runs if r.get("predictions") is not None]
    if len(calibration) != len(runs) or any(
            c["name"] != (r.get("name") or r["metrics"].get("detector")) for r, c in zip(runs, calibration, strict=True)):
        raise ValueError("calibration must be calibration_rows(runs): one row per run with predictions, in order")
    cols = min(3, len(runs))
    rows = -(-len(runs) // cols)
    fig = Figure(figsize=(5.2 * cols, 4.4 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, r, c in zip(axes, runs, calibration, strict=False):
        p = r["predictions"]
        q = None if c["temperature"] is None else apply_temperature(p["p_fake"], c["temperature"])
        # A temperature that flattens every score makes a low ECE meaningless: say so on the panel.
        flat = str(c["verdict"]).startswith("uninformative")
        reliability_figure(p["label"], p["p_fake"], p_calibrated=q, ax=ax,
                           title=r["name"] + (", scaling uninformative" if flat else ""),
                           calibrated_label="after temperature scaling" + (" (uninformative)" if flat else ""))
        ax.title.set_fontsize("medium")
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    return fig


def roc_curves(runs: Sequence[Mapping[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (labels, p_fake)} of every run with test predictions holding both labels (for plots)."""
    curves = {}
    for r in runs:
        preds = r.get("predictions")
        if preds is not None and len(np.unique(preds["label"])) == 2:
            curves[r.get("name") or r["metrics"]["detector"]] = (preds["label"], preds["p_fake"])
        elif preds is not None:
            warnings.warn(f"{r.get('path')}: test predictions hold one class only; no ROC curve", stacklevel=2)
    return curves


# --------------------------------------------------------------------------- rendering

def _fmt_num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (list, tuple)) and len(v) == 2:  # a published range
        return f"{_fmt_num(v[0], 3)}–{_fmt_num(v[1], 3)}"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}f}"
    return str(v)


def as_code_if_at(text: str) -> str:
    """`acc@0.5` as code: Markdown renderers (JupyterLab, GitHub) turn a bare `name@x.y` into an
    e-mail link."""
    return f"`{text}`" if "@" in text and "`" not in text else text


def format_cell(row: Mapping[str, Any], key: str, kind: str = "num", digits: int = 4) -> str:
    """One table cell: text, an int, a number, (`kind="ci"`) `value [lo, hi]` when the CI exists, or
    (`kind="pm"`) `mean ± sd` when `<key>_sd` exists (a mean over seeds)."""
    v = row.get(key)
    if kind == "text":
        return "" if v is None else as_code_if_at(str(v).replace("|", "\\|"))
    if kind == "int":
        return _fmt_num(v if v is None or isinstance(v, (list, tuple)) else int(v))
    text = _fmt_num(v, digits)
    ci = row.get(f"{key}_ci95") if kind == "ci" else None
    if ci and v is not None and not isinstance(v, (list, tuple)):
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    sd = row.get(f"{key}_sd") if kind == "pm" else None
    if sd is not None and v is not None:
        text += f" ± {sd:.{digits}f}"
    return text


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]] | None = None,
                   *, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table. columns: (key, header, kind) with kind text|int|num|ci|pm."""
    if not rows:
        return "_(no rows)_\n"
    if columns is None:
        columns = [(k, k, "num" if isinstance(rows[0][k], float) else "text") for k in rows[0]]
    lines = ["| " + " | ".join(as_code_if_at(h) for _, h, _ in columns) + " |",
             "|" + "|".join("---" if kind == "text" else "---:" for _, _, kind in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(format_cell(r, k, kind, digits) for k, _, kind in columns) + " |")
    return "\n".join(lines) + "\n"


PER_CLASS_COLUMNS = (("name", "detector", "text"), ("cifar_class", "class", "text"),
                     ("real_accuracy", "REAL acc.", "num"), ("fake_accuracy", "FAKE acc.", "num"),
                     ("n_real", "n REAL", "int"), ("n_fake", "n FAKE", "int"))
CALIBRATION_COLUMNS = (("name", "detector", "text"), ("temperature", "T (fit on val)", "num"),
                       ("ece_before", "ECE before", "num"), ("ece_after", "ECE after", "num"),
                       ("brier_before", "Brier before", "num"), ("brier_after", "Brier after", "num"),
                       ("sd_after", "score sd after", "num"), ("verdict", "verdict", "text"))


def per_class_wide(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-class rows pivoted: one row per (detector, label), one column per CIFAR class."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        for word, label in (("real", "REAL"), ("fake", "FAKE")):
            row = out.setdefault((r["name"], label), {"name": r["name"], "label": label})
            row[r["cifar_class"]] = r.get(f"{word}_accuracy")
    return list(out.values())


def per_class_wide_columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    present = [c for c in CIFAR_CLASSES if any(c in r for r in rows)]
    return [("name", "detector", "text"), ("label", "images", "text")] + [(c, c, "num") for c in present]
