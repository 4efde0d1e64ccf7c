"""The report along the study grid's axes: for each axis with more than one value, a table and a
figure of every method against it, the other axes held at the study's main cell (the training-set
size: the learning curves of `analysis/learning_curves.py`; the seeds: seeds.csv).

Input: the index rows (OUT/runs.csv, `evaluation.study.read_index`). Each cell's figure is the
mean over its training seeds with the sd; a cell with one seed shows its bootstrap 95% CI. The
leak-free re-evaluation's numbers are used where every run along the axis has one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cifake_lib.core.files import read_json
from cifake_lib.core.formatting import format_metric
from cifake_lib.evaluation.study import ALL, OWN

# The training-set size has its own section, the learning curves (`analysis/learning_curves.py`).
AXES = ("model", "image_size")
METRICS = ("roc_auc", "accuracy")
TITLES = {"train_size": "Along the training-set size", "model": "Along the backbone",
          "image_size": "Along the input resolution"}


def _number(cell: Any) -> float | None:
    try:
        v = float(cell)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _size_value(cell: str) -> float:
    return math.inf if cell == ALL else float(cell)


def main_cell(rows: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """The values the other axes are held at: the first model, the largest training set, the first
    input size, all seeds."""
    trained = [r for r in rows if r.get("seed", "") != ""]
    models = list(dict.fromkeys(r["model"] for r in rows if r["model"]))
    sizes = sorted({r["train_size"] for r in trained}, key=_size_value)
    pixels = list(dict.fromkeys(r.get("image_size", "") for r in rows if r["model"]))
    return {"model": models[0] if models else "", "train_size": sizes[-1] if sizes else "",
            "image_size": pixels[0] if pixels else ""}


def _holds(row: Mapping[str, str], hold: Mapping[str, str]) -> bool:
    """Whether a run sits at the held values of the other axes (an axis it lacks holds anywhere:
    the CNN has no model or input size, zero-shot no training-set size)."""
    lacks = {"model": row.get("model") == "", "image_size": row.get("model") == "",
             "train_size": row.get("seed", "") == ""}
    return all(lacks.get(k) or row.get(k, "") == v for k, v in hold.items())


def _interval(root: Path, row: Mapping[str, str], metric: str, leak_free: bool) -> tuple[float, float] | None:
    folder = row.get("evaluated_dir") if leak_free else row.get("run_dir")
    path = root / str(folder or "") / "metrics.json"
    try:
        ci = read_json(path).get(f"{metric}_ci95")
    except (OSError, ValueError, AttributeError):
        return None
    return (float(ci[0]), float(ci[1])) if isinstance(ci, list) and len(ci) == 2 else None


def axis_rows(root: str | Path, rows: Sequence[Mapping[str, str]], axis: str) -> list[dict[str, Any]]:
    """One row per (method, axis value): n_seeds, and per metric its mean with `_lo`/`_hi` (mean ± sd
    over seeds, or the single run's 95% CI) and `_sd`; `leak_free` says which test split."""
    root = Path(root)
    hold = {k: v for k, v in main_cell(rows).items() if k != axis}
    # zero-shot (no seed) trains nothing: it has a place along the backbone and the resolution only
    cells = [r for r in rows if r.get("status") == "complete" and _holds(r, hold)
             and (r.get("seed", "") != "" or axis in ("model", "image_size"))]
    if axis in ("model", "image_size"):  # the CNN has no backbone: no place along these axes
        cells = [r for r in cells if r.get("model")]
    leak_free = bool(cells) and all(_number(r.get("leak_free_roc_auc")) is not None for r in cells)
    def value_of(r: Mapping[str, str]) -> str:
        return r.get(axis) or OWN if axis == "image_size" else r.get(axis, "")

    order: dict[str, int] = {}  # the grid's own order of the axis's values (the index lists them so)
    for r in rows:
        order.setdefault(value_of(r), len(order))
    groups: dict[tuple[str, str], list[Mapping[str, str]]] = {}
    for r in cells:
        groups.setdefault((r["method"], value_of(r)), []).append(r)
    out = []
    for (method, value), runs in groups.items():
        row: dict[str, Any] = {"method": method, "value": value, "n_seeds": len(runs), "leak_free": leak_free,
                               "order": order.get(value, len(order))}
        for metric in METRICS:
            vals = [v for v in (_number(r.get(("leak_free_" if leak_free else "") + metric)) for r in runs)
                    if v is not None]
            if not vals:
                row.update({metric: None, f"{metric}_sd": None, f"{metric}_lo": None, f"{metric}_hi": None})
                continue
            mean = statistics.fmean(vals)
            sd = statistics.stdev(vals) if len(vals) > 1 else None
            # the test set's own uncertainty (one run's bootstrap CI) is shown even over seeds: a method
            # that ignores the seed (the probe) has sd 0 and is no more certain for it
            ci = _interval(root, runs[0], metric, leak_free)
            lo, hi = ci if ci else (mean - (sd or 0.0), mean + (sd or 0.0))
            row.update({metric: mean, f"{metric}_sd": sd, f"{metric}_lo": lo, f"{metric}_hi": hi,
                        f"{metric}_ci_of_one_run": ci is not None})
        out.append(row)
    numeric = axis == "train_size"
    return sorted(out, key=lambda r: (r["method"], _size_value(r["value"]) if numeric else r["order"]))


def _cell(row: Mapping[str, Any], metric: str) -> str:
    v = row.get(metric)
    if v is None:
        return "–"
    sd = f" ± {format_metric(row[f'{metric}_sd'])}" if row.get(f"{metric}_sd") is not None else ""
    ci = (f" [{format_metric(row[f'{metric}_lo'])}, {format_metric(row[f'{metric}_hi'])}]"
          if row.get(f"{metric}_ci_of_one_run", not sd) else "")
    return f"{format_metric(v)}{sd}{ci}"


def axis_markdown(rows: Sequence[Mapping[str, Any]], axis: str, skipped: Mapping[tuple[str, str], str] | None = None
                  ) -> str:
    """The axis table as Markdown: one line per method, one column per axis value; a run the grid
    skipped (`skipped`: (method, value) -> why) is marked, its reason listed under the table."""
    values = list(dict.fromkeys(r["value"] for r in sorted(
        rows, key=lambda r: _size_value(r["value"]) if axis == "train_size" else r.get("order", 0))))
    values += [v for _, v in (skipped or {}) if v not in values]
    by = {(r["method"], r["value"]): r for r in rows}
    methods = list(dict.fromkeys([r["method"] for r in rows] + [m for m, _ in (skipped or {})]))
    lines = [f"| method | {' | '.join(str(v) for v in values)} |", "|---" * (len(values) + 1) + "|"]
    for metric in METRICS:
        for method in methods:
            cells = [_cell(by[(method, v)], metric) if (method, v) in by else
                     "skipped\\*" if (method, v) in (skipped or {}) else "–" for v in values]
            lines.append(f"| {method} ({metric.replace('_', ' ')}) | {' | '.join(cells)} |")
    reasons = dict.fromkeys(skipped.values()) if skipped else {}
    notes = [f"\\* skipped: {why} ({', '.join(f'{m} on {v}' for (m, v), w in skipped.items() if w == why)})"
             for why in reasons]
    return "\n".join(lines) + "\n" + ("\n" + "\n\n".join(notes) + "\n" if notes else "")


def _skipped(rows: Sequence[Mapping[str, str]], axis: str) -> dict[tuple[str, str], str]:
    """(method, axis value) -> why, for the runs the grid skipped (their backbone cannot make them)."""
    return {(r["method"], r.get(axis) or OWN): r.get("reason") or "not possible"
            for r in rows if r.get("status") == "skipped" and r.get(axis, "") != ""}


def grid_sections(root: str | Path, rows: Sequence[Mapping[str, str]]) -> list[Any]:
    """A report Section for each axis of the study with more than one value among its complete runs."""
    from cifake_lib.analysis.parts import Section
    from cifake_lib.viz.grid_plots import axis_figure

    sections = []
    for axis in AXES:
        table = axis_rows(root, rows, axis)
        skipped = _skipped(rows, axis) if axis == "model" else {}
        if len({r["value"] for r in table} | {v for _, v in skipped}) < 2:
            continue
        split = "leak-free test split" if table[0]["leak_free"] else "test split"
        s = Section(TITLES[axis])
        hold = ", ".join(f"{k} {v or '(own)'}" for k, v in main_cell(rows).items() if k != axis)
        s.add(f"Every method at each value of `{axis}` ({hold}; {split}). A cell is the mean over "
              "training seeds ± their sd (with two seeds or more) and the bootstrap 95% CI of one run (the "
              "first seed's): the test set's uncertainty, which a seed-independent method keeps. Every choice (threshold, "
              "hyper-parameters, early stopping) was made on the same validation split for every value.\n",
              axis_markdown(table, axis, skipped))
        name = f"grid_{axis}"
        s.tables[f"{name}.csv"] = (table, None)
        s.image(axis_figure(table, axis, title=f"Test metrics along {axis.replace('_', ' ')} ({split})"),
                f"{name}.png", f"test ROC AUC and accuracy along {axis}")
        sections.append(s)
    return sections


__all__ = ["AXES", "axis_markdown", "axis_rows", "grid_sections", "main_cell"]
