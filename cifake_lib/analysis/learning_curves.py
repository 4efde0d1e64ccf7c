"""Learning curves: test ROC AUC and accuracy against training-set size, per method family.

    records = learning_curve_records(paths)        # or [(run folder, method, train_size), ...]
    rows = learning_curve_rows(records)             # one row per run (the table, CSV)
    points = curve_points(rows)                     # one per (method, size): the figure's points
    part = learning_curve_section(records)          # report.md's "Learning curves"

Each size's training set is a nested, stratified subset (`data.load.nested_train_subset`), and
every size is tuned and scored on the same validation and test images, so a change along a
curve is the training-set size and nothing else. Records come from the study's runs.csv
(columns method, train_size, run_dir, status) when there is one, else from each run's
run.json (`args.train_size`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cifake_lib.analysis.compare import markdown_table
from cifake_lib.evaluation.runs import detector_kind, find_runs, read_run

__all__ = ["LC_COLUMNS", "curve_points", "learning_curve_records", "learning_curve_rows", "learning_curve_section"]

Record = tuple  # (run folder, method, train_size[, training seed: runs.csv's, as a re-evaluation records its own])
LC_COLUMNS = (("method", "method", "text"), ("train_size", "training images", "int"), ("seed", "seed", "int"),
              ("n_test", "n test", "int"), ("roc_auc", "test ROC AUC [95% CI]", "ci"),
              ("accuracy", "test accuracy [95% CI]", "ci"), ("run", "run", "text"))
RUNS_CSV = "runs.csv"


def _runs_csv_records(path: Path) -> list[Record]:
    """The runs along train_size with the grid's other axes held at the study's main cell: its first
    backbone (the CNN has none) and its first input size; each run's leak-free re-evaluation
    (`evaluated_dir`) when every one of them has it, as the headline tables read."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    models = [r["model"] for r in rows if r.get("model")]
    main_size = next((r.get("image_size") or "" for r in rows if not models or r.get("model") == models[0]), "")
    picked = []
    for r in rows:
        if models and r.get("model") not in ("", None, models[0]):
            continue
        if (r.get("image_size") or "") != main_size:
            continue
        size, run_dir = (r.get("train_size") or "").strip(), (r.get("run_dir") or "").strip()
        if not size or size.lower() in ("none", "all") or not run_dir or r.get("status", "complete") != "complete":
            continue
        picked.append(r)
    column = "evaluated_dir" if picked and all((r.get("evaluated_dir") or "").strip() for r in picked) else "run_dir"
    out = []
    for r in picked:
        folder = Path(r[column].strip())
        out.append((folder if folder.is_absolute() else path.parent / folder, r.get("method") or "",
                    int(r["train_size"]), int(r["seed"]) if (r.get("seed") or "").strip() else None))
    return out


def learning_curve_records(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Record]:
    """(run folder, method, train_size) of every run with a train_size under `paths`."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    tables = [Path(p) / RUNS_CSV for p in paths if (Path(p) / RUNS_CSV).is_file()]
    if tables:
        return [rec for t in tables for rec in _runs_csv_records(t)]
    out = []
    for folder in find_runs(paths):
        run = read_run(folder, predictions=False)
        size = ((run["run"] or {}).get("args") or {}).get("train_size")
        if size is not None and run["metrics"].get("split") == "test":
            out.append((folder, detector_kind(run["metrics"].get("detector", "")), int(size)))
    return out


def learning_curve_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One row per run: method, train_size, seed, test n, ROC AUC and accuracy with their CIs."""
    rows = []
    for folder, method, size, *seed in records:
        m = read_run(folder, predictions=False)["metrics"]
        rows.append({"method": method or detector_kind(m.get("detector", "")), "train_size": int(size),
                     "seed": seed[0] if seed and seed[0] is not None else m.get("seed"), "n_test": m.get("n"), "roc_auc": m.get("roc_auc"),
                     "roc_auc_ci95": m.get("roc_auc_ci95"), "accuracy": m.get("accuracy"),
                     "accuracy_ci95": m.get("accuracy_ci95"), "run": Path(folder).name})
    return sorted(rows, key=lambda r: (r["method"], r["train_size"], r["seed"] if r["seed"] is not None else -1))


def curve_points(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One point per (method, size): the value of its one run with that run's bootstrap CI, or the
    mean over its seeds with the seeds' range (min, max)."""
    out = []
    for key in sorted({(r["method"], r["train_size"]) for r in rows}):
        group = [r for r in rows if (r["method"], r["train_size"]) == key]
        point: dict[str, Any] = {"method": key[0], "train_size": key[1], "n_runs": len(group)}
        for metric in ("roc_auc", "accuracy"):
            values = [float(r[metric]) for r in group if r.get(metric) is not None]
            if not values:
                point[metric] = None
                continue
            if len(values) == 1:
                ci = group[0].get(f"{metric}_ci95") or [values[0], values[0]]
                lo, hi = float(ci[0]), float(ci[1])
            else:
                lo, hi = min(values), max(values)
            point.update({metric: float(np.mean(values)), f"{metric}_lo": lo, f"{metric}_hi": hi})
        out.append(point)
    return out


def learning_curve_section(records: Sequence[Record]) -> Any:
    """report.md's "Learning curves" part (table, CSV, figure), or None without records."""
    from cifake_lib.analysis.parts import Section
    from cifake_lib.viz.learning_curves import learning_curve_figure

    if not records:
        return None
    rows = learning_curve_rows(records)
    points = curve_points(rows)
    s = Section("Learning curves")
    sizes = sorted({r["train_size"] for r in rows})
    s.add(f"Test ROC AUC and accuracy (at each run's validation threshold) against the number of training "
          f"images ({', '.join(f'{n:,}' for n in sizes)}). Each size's training set is a nested, stratified "
          "(label x CIFAR class) subset of the next, carved after the validation split: every size is tuned "
          "and scored on the same validation and test images.\n",
          markdown_table(rows, LC_COLUMNS))
    several = any(p["n_runs"] > 1 for p in points)
    s.image(learning_curve_figure(points), "learning_curves.png", "Test ROC AUC and accuracy against training-set size")
    s.add("Error bars: the bootstrap 95% CI of a single run" + (
        "; where several seeds ran at one size, the point is their mean and the bar their range" if several
        else "") + ". Comparisons between sizes are read from these intervals only descriptively.\n")
    s.tables["learning_curves.csv"] = (rows, None)
    return s
