"""The report's cost table and efficiency frontier: test ROC AUC beside what each method cost to train.

Each run's `cost` record (`methods.cost`, in run.json and metrics.json) gives trainable and total
parameters, peak memory (CUDA's max_memory_allocated, or the CPU's peak RSS, labelled), training
seconds, images per second and device-seconds per 1,000 training images. Runs without one (a
stage that does not measure it) are listed as such, not guessed. Over several seeds of a method,
`cost_summary` gives the mean and the standard deviation.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from cifake_lib.analysis.parts import Section
from cifake_lib.methods.cost import CPU_PEAK

COSTS_CSV = "costs.csv"
SEED_COSTS_CSV = "seed_costs.csv"
FRONTIER_FIGURE = "efficiency_frontier.png"
COLUMNS = ("method", "trainable_params", "total_params", "peak_memory_gib", "peak_memory_kind", "train_seconds",
           "train_images_per_second", "device_seconds_per_1k_images", "test_roc_auc", "test_roc_auc_ci95", "device")
TABLE = (("method", "method", "text"), ("test_roc_auc", "test ROC AUC [95% CI]", "ci"),
         ("trainable_params", "trainable params", "int"), ("total_params", "total params", "int"),
         ("peak_memory_gib", "peak memory (GiB)", "num"), ("peak_memory_kind", "memory measured as", "text"),
         ("train_seconds", "train s", "num"), ("train_images_per_second", "train img/s", "num"),
         ("device_seconds_per_1k_images", "device-s / 1k img", "num"))


def run_cost(run: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cost record of a loaded run (its run.json, else the original's metrics, else its metrics)."""
    for source in ((run.get("run") or {}), (run.get("metrics_original") or {}), (run.get("metrics") or {})):
        if isinstance(source.get("cost"), Mapping):
            return dict(source["cost"])
    return None


def cost_rows(runs: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(one row per run with a cost record, the names of runs without one)."""
    rows, missing = [], []
    for r in runs:
        cost = run_cost(r)
        name = str(r.get("name") or (r.get("metrics") or {}).get("detector"))
        if cost is None:
            missing.append(name)
            continue
        m = r.get("metrics") or {}
        peak = cost.get("peak_memory_bytes")
        rows.append({"method": name, **{k: cost.get(k) for k in COLUMNS if k in cost},
                     "peak_memory_gib": None if peak is None else peak / 2**30,
                     "test_roc_auc": m.get("roc_auc"), "test_roc_auc_ci95": m.get("roc_auc_ci95")})
    return rows, missing


def cost_summary(rows: Sequence[Mapping[str, Any]], key: str = "method") -> list[dict[str, Any]]:
    """Mean (and sd, as `<field>_sd`, over >= 2 runs) of each numeric field, per method; `n_runs`."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r[key]), []).append(r)
    out = []
    for name, rs in groups.items():
        row: dict[str, Any] = {key: name, "n_runs": len(rs), "peak_memory_kind": rs[0].get("peak_memory_kind"),
                               "device": rs[0].get("device")}
        for field in COLUMNS:
            values = [float(r[field]) for r in rs if isinstance(r.get(field), (int, float))]
            if field in row or not values:
                continue
            row[field] = statistics.fmean(values)
            if len(values) > 1:
                row[f"{field}_sd"] = statistics.stdev(values)
        out.append(row)
    return out


# runs.csv's cost columns (app/index.py) -> cost_summary's fields
INDEX_FIELDS = {"roc_auc": "test_roc_auc", "trainable_params": "trainable_params", "total_params": "total_params",
                "peak_memory_bytes": "peak_memory_gib", "train_seconds": "train_seconds",
                "train_images_per_second": "train_images_per_second",
                "device_seconds_per_1k_images": "device_seconds_per_1k_images"}
SEED_TABLE = (("method", "method", "text"), ("model", "model", "text"), ("train_size", "train size", "text"),
              ("image_size", "input px", "text"), ("n_runs", "seeds", "int"),
              ("test_roc_auc", "test ROC AUC", "pm"), ("trainable_params", "trainable params", "int"),
              ("peak_memory_gib", "peak memory (GiB)", "pm"), ("train_seconds", "train s", "pm"),
              ("train_images_per_second", "train img/s", "pm"),
              ("device_seconds_per_1k_images", "device-s / 1k img", "pm"))


def seed_cost_rows(index_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over seeds of each method's cost and test ROC AUC (leak-free when the study
    re-evaluated it), per (method, model, train size, input size), from the study's index
    (OUT/runs.csv); only cells that ran two seeds or more. A CPU run's peak memory is left out: it is
    the whole process's peak RSS, which only grows as a study runs, so it compares no two methods."""
    rows = []
    for r in index_rows:
        if r.get("status") != "complete" or not r.get("seed") or not r.get("trainable_params"):
            continue
        cell = (r["method"], r.get("model"), r.get("train_size"), r.get("image_size"))
        row = {"method": r["method"], "model": r.get("model") or "–", "cell": cell, "seed": r["seed"],
               "train_size": r.get("train_size") or "all", "image_size": r.get("image_size") or "own",
               "peak_memory_kind": r.get("peak_memory_kind")}
        for column, field in INDEX_FIELDS.items():
            if column == "peak_memory_bytes" and r.get("peak_memory_kind") == CPU_PEAK:
                continue
            value = r.get("leak_free_roc_auc") if column == "roc_auc" and r.get("leak_free_roc_auc") else r.get(column)
            if value not in (None, ""):
                row[field] = float(value) / (2**30 if column == "peak_memory_bytes" else 1)
        rows.append(row)
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault(row.pop("cell"), []).append(row)
    out = []
    for runs in cells.values():
        seeds = len({r["seed"] for r in runs})
        if seeds >= 2:  # one method per cell: cost_summary gives its one row
            out.append({**cost_summary(runs)[0], "n_runs": seeds,
                        **{k: runs[0][k] for k in ("model", "train_size", "image_size")}})
    return out


def cost_section(study: Any, index_rows: Sequence[Mapping[str, Any]] = ()) -> Section:
    """The report's "Cost" section: the table, costs.csv and the frontier figure; with the study's
    index rows, the mean ± sd over seeds of each method that ran several (seed_costs.csv)."""
    from cifake_lib.analysis.compare import markdown_table
    from cifake_lib.viz.cost_figures import frontier_figure

    s = Section("What each method cost")
    rows, missing = cost_rows(study.runs)
    if not rows:
        s.add("No run recorded its training cost.\n")
        return s
    s.add("Measured while training (`cost` in each run's run.json): parameters that learn and in all, peak memory "
          "(CUDA: `torch.cuda.max_memory_allocated` over training; CPU: the process's peak resident set so far, "
          "which includes the loaded data and only grows as a study runs its steps in one process, so on the CPU "
          "it bounds each run's memory from above and compares no two methods), training seconds and throughput, and device-seconds per 1,000 "
          "training images. Test ROC AUC with its 95% bootstrap interval.\n",
          markdown_table(rows, TABLE))
    if missing:
        s.add(f"Not measured (no cost record): {', '.join(missing)}.\n")
    s.tables[COSTS_CSV] = (rows, list(COLUMNS))
    seeds = seed_cost_rows(index_rows)
    if seeds:
        s.add("Over training seeds (the study's runs.csv; mean ± sample sd, the main cell's table above is "
              "one seed; test ROC AUC leak-free where the study re-evaluated; CPU peak memory left out):\n",
              markdown_table(seeds, SEED_TABLE))
        s.tables[SEED_COSTS_CSV] = (seeds, None)
    s.image(frontier_figure(rows, title="Test ROC AUC against trainable parameters and training time"),
            FRONTIER_FIGURE, "Efficiency frontier: test ROC AUC against trainable parameters and training seconds")
    return s


__all__ = ["COSTS_CSV", "FRONTIER_FIGURE", "SEED_COSTS_CSV", "cost_rows", "cost_section", "cost_summary", "run_cost",
           "seed_cost_rows"]
