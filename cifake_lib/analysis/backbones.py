"""Each backbone's best detector against the default backbone's, paired on the same test images.

For every model of the study's grid, its best detector is the complete run of the main cell
(largest training set, first seed, first input size; zero-shot too) with the highest validation
ROC AUC; chosen on validation, never on test. Each is compared with the default (first) backbone's
best on the images both scored, from the leak-free re-evaluations where the study has them: the
paired bootstrap interval of the difference, McNemar's exact test for accuracy (each at its own
validation threshold) and DeLong's test for ROC AUC (`evaluation.stats.compare_pair`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cifake_lib.core.files import read_json
from cifake_lib.core.formatting import format_metric, format_p

COLUMNS = ("backbone", "detector", "default_detector", "metric", "value", "default_value", "difference",
           "ci_low", "ci_high", "p_value", "test", "n")
CSV_FILE = "backbone_comparisons.csv"


def validation_auc(root: Path, row: Mapping[str, str]) -> float | None:
    """A run's validation ROC AUC: its metrics_val.json, or for zero-shot its best set's (summary.csv)."""
    folder = root / row["run_dir"]
    if (folder / "metrics_val.json").is_file():
        return read_json(folder / "metrics_val.json").get("roc_auc")
    summary = folder / "summary.csv"
    if summary.is_file():
        with summary.open(newline="", encoding="utf-8") as f:
            best = [r for r in csv.DictReader(f) if str(r.get("best_on_val")).lower() in ("true", "1")]
        return float(best[0]["val_roc_auc"]) if best and best[0].get("val_roc_auc") else None
    return None


def best_per_backbone(root: Path, rows: Sequence[Mapping[str, str]]) -> dict[str, Mapping[str, str]]:
    """{model: its main-cell run with the highest validation ROC AUC}, in the grid's model order."""
    from cifake_lib.analysis.grid import _holds, main_cell

    hold = {k: v for k, v in main_cell(rows).items() if k != "model"}
    seeds = [r["seed"] for r in rows if r.get("seed", "") != ""]
    out: dict[str, tuple[float, Mapping[str, str]]] = {}
    for r in rows:
        if r.get("status") != "complete" or not r.get("model") or not _holds(r, hold):
            continue
        if r.get("seed", "") not in ("", seeds[0] if seeds else ""):
            continue
        auc = validation_auc(root, r)
        if auc is not None and (r["model"] not in out or auc > out[r["model"]][0]):
            out[r["model"]] = (auc, r)
    return {m: r for m, (_, r) in out.items()}


def _read(root: Path, row: Mapping[str, str]) -> dict[str, Any] | None:
    from cifake_lib.evaluation.runs import read_run

    for folder in (row.get("evaluated_dir"), row.get("run_dir")):
        if folder and (root / folder / "metrics.json").is_file():
            return {**read_run(root / folder), "name": f"{row['method']} ({row['model']})"}
    return None


def comparison_rows(root: str | Path, rows: Sequence[Mapping[str, str]], *, n_boot: int = 2000,
                    seed: int = 0) -> list[dict[str, Any]]:
    """One row per (other backbone, metric): its best detector against the default backbone's."""
    from cifake_lib.analysis.study import aligned
    from cifake_lib.evaluation.stats import compare_pair

    root = Path(root)
    best = best_per_backbone(root, rows)
    if len(best) < 2:
        return []
    default_model, *others = list(best)
    base = _read(root, best[default_model])
    out = []
    for model in others:
        run = _read(root, best[model])
        data = aligned(run, base) if run is not None and base is not None else None
        if data is None:
            continue
        y, p_run, p_base = data
        for r in compare_pair(y, p_run, p_base, threshold_a=float(run["metrics"]["threshold"]),
                              threshold_b=float(base["metrics"]["threshold"]), n_boot=n_boot, seed=seed):
            out.append({"backbone": model, "detector": run["name"], "default_detector": base["name"],
                        "metric": r["metric"], "value": r["value_a"], "default_value": r["value_b"],
                        "difference": r["difference"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                        "p_value": r["p_value"], "test": r["test"], "n": r["n"]})
    return out


def backbone_comparison(root: str | Path, rows: Sequence[Mapping[str, str]], section: Any) -> None:
    """Add the comparison table (and its CSV) to the report's "Along the backbone" section."""
    table = comparison_rows(root, rows)
    if not table:
        return
    lines = ["| backbone | its best detector (validation) | default's best | metric | value | default | "
             "difference [95% CI] | p (test) |", "|---|---|---|---|---:|---:|---:|---|"]
    for r in table:
        lines.append(f"| {r['backbone']} | {r['detector']} | {r['default_detector']} | {r['metric'].replace('_', ' ')}"
                     f" | {format_metric(r['value'])} | {format_metric(r['default_value'])} | "
                     f"{format_metric(r['difference'], [r['ci_low'], r['ci_high']])} | "
                     f"{format_p(r['p_value'])} ({r['test']}) |")
    section.add("Each backbone's best detector, chosen on validation ROC AUC among its runs above, against the "
                f"default backbone's best ({table[0]['default_detector']}), on the same {table[0]['n']:,} test "
                "images: paired bootstrap 95% interval of the difference (this backbone minus the default), "
                "McNemar's exact test for accuracy at each detector's own validation threshold, DeLong's test "
                "for ROC AUC.\n", "\n".join(lines) + "\n")
    section.tables[CSV_FILE] = (table, COLUMNS)


__all__ = ["COLUMNS", "CSV_FILE", "backbone_comparison", "best_per_backbone", "comparison_rows", "validation_auc"]
