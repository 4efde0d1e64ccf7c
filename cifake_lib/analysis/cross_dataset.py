"""The cross-dataset table: every detector on every external test set (`cifake evaluate --data EXTERNAL`).

    rows = cross_dataset_rows(runs); pairs = cross_dataset_pairs(runs)
    section = cross_dataset_section(paths)   # report.md's "Cross-dataset results", or None

`paths` are folders searched recursively for run folders whose metrics.json has split
"external" (the layout `OUT/external/<set>/<detector>/` is the study's). ROC AUC is
threshold-free; accuracy is at each detector's own threshold, chosen on CIFAKE's validation
split, so a shift of the score distribution on the new set shows as an accuracy drop at an
unchanged AUC (acc@0.5 beside it). Intervals are the percentile bootstrap of metrics.json; the
paired comparisons (every pair of detectors on each set, on the images both scored) are the
paired bootstrap with McNemar's exact test and DeLong's test (`evaluation/stats.py`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from cifake_lib.analysis.compare import markdown_table
from cifake_lib.core.files import read_json
from cifake_lib.evaluation.runs import METRICS, read_run
from cifake_lib.evaluation.stats import compare_pair

__all__ = ["CROSS_COLUMNS", "PAIR_COLUMNS", "cross_dataset_markdown", "cross_dataset_pairs", "cross_dataset_rows",
           "cross_dataset_section", "external_runs"]

CROSS_COLUMNS = (("set", "test set", "text"), ("detector", "detector", "text"), ("native_size", "image size", "text"),
                 ("n", "n", "int"), ("roc_auc", "ROC AUC [95% CI]", "ci"),
                 ("accuracy", "accuracy at CIFAKE-val threshold [95% CI]", "ci"), ("acc_05", "acc@0.5", "num"),
                 ("threshold", "threshold", "num"))
PAIR_COLUMNS = (("set", "test set", "text"), ("detector_a", "A", "text"), ("detector_b", "B", "text"),
                ("metric", "metric", "text"), ("difference", "A - B", "num"), ("ci_low", "95% CI low", "num"),
                ("ci_high", "95% CI high", "num"), ("p_value", "p", "num"), ("test", "test", "text"),
                ("n", "n", "int"))


def external_runs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Every external-set run folder under `paths` (read_run dicts, plus "set" and "name")."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = sorted({f.resolve() for p in map(Path, paths)
                    for f in ([p] if p.is_file() else p.rglob(METRICS) if p.is_dir() else [])})
    runs = []
    for file in files:  # evaluation.runs.find_runs keeps test records only: external ones are read here
        try:
            split = read_json(file).get("split")
        except (OSError, ValueError, AttributeError):
            continue
        if split != "external":
            continue
        folder = file.parent
        run = read_run(folder)
        m = run["metrics"]
        info = m.get("external") or {}
        name = folder.name if folder.parent.name == info.get("name") else m.get("detector", folder.name)
        runs.append({**run, "set": info.get("name") or str(m.get("data")), "name": name})
    names = [(r["set"], r["name"]) for r in runs]
    for r in runs:  # two runs with one name on one set (e.g. two seeds): the folder keeps them apart
        if names.count((r["set"], r["name"])) > 1:
            r["name"] = f"{r['name']} ({r['path'].name})"
    return sorted(runs, key=lambda r: (r["set"], r["name"]))


def cross_dataset_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (set, detector): CROSS_COLUMNS, from each run's metrics.json."""
    rows = []
    for r in runs:
        m = r["metrics"]
        rows.append({"set": r["set"], "detector": r["name"], "native_size": (m.get("external") or {}).get("native_size"),
                     "n": m.get("n"), "roc_auc": m.get("roc_auc"), "roc_auc_ci95": m.get("roc_auc_ci95"),
                     "accuracy": m.get("accuracy"), "accuracy_ci95": m.get("accuracy_ci95"),
                     "acc_05": (m.get("natural_threshold") or {}).get("accuracy"), "threshold": m.get("threshold")})
    return rows


def _aligned(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[Any, Any, Any] | None:
    from cifake_lib.analysis.study import aligned

    return aligned(a, b)


def cross_dataset_pairs(runs: Sequence[Mapping[str, Any]], *, n_boot: int = 2000, seed: int = 0,
                        ) -> list[dict[str, Any]]:
    """Every pair of detectors on each set, compared on the same images (PAIR_COLUMNS rows)."""
    rows = []
    for test_set in sorted({r["set"] for r in runs}):
        on_set = [r for r in runs if r["set"] == test_set]
        for a, b in combinations(on_set, 2):
            data = _aligned(a, b)
            if data is None:
                continue
            y, pa, pb = data
            for row in compare_pair(y, pa, pb, threshold_a=float(a["metrics"]["threshold"]),
                                    threshold_b=float(b["metrics"]["threshold"]), n_boot=n_boot, seed=seed):
                rows.append({"set": test_set, "detector_a": a["name"], "detector_b": b["name"], **row})
    return rows


def cross_dataset_markdown(rows: Sequence[Mapping[str, Any]], pairs: Sequence[Mapping[str, Any]]) -> str:
    """The two tables with their captions."""
    text = [markdown_table(rows, CROSS_COLUMNS),
            "\nROC AUC is threshold-free; accuracy is at each detector's threshold chosen on CIFAKE's "
            "validation split (`acc@0.5` beside it). Intervals: percentile bootstrap, 95%. Image size: "
            "the external set's most common native size; each detector's own preprocessing resized it.\n"]
    if pairs:
        text += ["\nPaired comparisons on each set (same images; paired bootstrap of the difference, McNemar "
                 "exact for accuracy, DeLong for ROC AUC; every pair, no correction for multiplicity):\n\n",
                 markdown_table(pairs, PAIR_COLUMNS)]
    return "".join(text)


def cross_dataset_section(paths: str | os.PathLike | Iterable[str | os.PathLike], *, n_boot: int = 2000,
                          ) -> Any:
    """report.md's "Cross-dataset results" part (CSV tables included), or None when no external
    set was scored under `paths`."""
    from cifake_lib.analysis.parts import Section

    runs = external_runs(paths)
    if not runs:
        return None
    rows, pairs = cross_dataset_rows(runs), cross_dataset_pairs(runs, n_boot=n_boot)
    s = Section("Cross-dataset results")
    s.add(f"{len(runs)} scoring(s) of {len({r['name'] for r in runs})} detector(s) on "
          f"{len({r['set'] for r in runs})} external test set(s) (`cifake evaluate --data EXTERNAL`).\n",
          cross_dataset_markdown(rows, pairs))
    s.tables["cross_dataset.csv"] = (rows, None)
    if pairs:
        s.tables["cross_dataset_paired.csv"] = (pairs, None)
    return s
