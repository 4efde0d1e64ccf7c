"""Robustness: every detector on the test images under the perturbation battery of `perturb`.

Each (perturbation, severity) of `perturb.PERTURBATIONS` is applied once to the whole test
array (deterministic, seeded), and every detector scores the same perturbed images.
Accuracy uses each detector's own saved threshold (chosen on validation when it was
trained); ROC AUC needs no threshold. The clean row ("none") is the plain evaluation.

Results: `robustness.csv` (one row per detector x perturbation x severity), `robustness.json`
(the rows plus what was evaluated), `robustness.md` (a wide Markdown table) and
`robustness.png` (accuracy and AUC against severity), written by `write_robustness` into one
folder; `find_robustness` locates them again for the report.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from cifake_lib.analysis.config import RobustnessConfig
from cifake_lib.core.files import read_json, write_json, write_text_atomic
from cifake_lib.core.results import RunResult
from cifake_lib.data.config import DataConfig, loaded
from cifake_lib.data.perturb import PERTURBATIONS, apply_perturbation, battery
from cifake_lib.evaluation.metrics import compute_metrics, utc_now

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData

RESULTS_JSON = "robustness.json"
RESULTS_CSV = "robustness.csv"
RESULTS_MD = "robustness.md"
RESULTS_PNG = "robustness.png"
CLEAN = "none"
ROW_FIELDS = ("detector", "perturbation", "param", "level", "severity", "label", "accuracy", "roc_auc",
              "real_accuracy", "fake_accuracy", "accuracy_drop", "roc_auc_drop", "threshold", "n")


def _takes_classes(detector: Any) -> bool:
    try:
        return "classes" in inspect.signature(detector.predict_proba).parameters
    except (TypeError, ValueError):
        return False


def predict(detector: Any, images: np.ndarray, classes: np.ndarray | None = None,
            batch_size: int = 256) -> np.ndarray:
    """p_fake from any detector; CIFAR classes go to detectors that use them (class-aware prompts)."""
    if classes is not None and _takes_classes(detector):
        return np.asarray(detector.predict_proba(images, batch_size, classes=classes), dtype=np.float64)
    return np.asarray(detector.predict_proba(images, batch_size), dtype=np.float64)


def _score(labels: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    m = compute_metrics(labels, p, threshold=threshold, n_boot=0)
    tn, fp = m["confusion"][0]
    fn, tp = m["confusion"][1]
    return {"accuracy": m["accuracy"], "roc_auc": m["roc_auc"],
            "real_accuracy": tn / (tn + fp) if tn + fp else None,
            "fake_accuracy": tp / (tp + fn) if tp + fn else None, "threshold": float(threshold), "n": m["n"]}


def run_battery(detectors: Mapping[str, Any], split: Any, *, perturbations: Sequence[str] | None = None,
                seed: int = 0, batch_size: int = 256, progress: bool = True) -> list[dict[str, Any]]:
    """Accuracy and AUC of each detector ({name: detector}) on `split` under every perturbation.

    Rows (dicts with ROW_FIELDS): first the clean row of each detector (perturbation "none",
    severity 0), then one per (perturbation, severity, detector); severity counts 1, 2, ...
    from mild to strong. accuracy_drop / roc_auc_drop are clean minus perturbed.
    """
    from tqdm.auto import tqdm

    if not detectors:
        raise ValueError("run_battery: no detectors")
    images, labels = np.asarray(split.images), np.asarray(split.labels)
    classes = np.asarray(split.classes) if getattr(split, "classes", None) is not None else None
    steps = [(CLEAN, None)] + battery(perturbations)
    rows: list[dict[str, Any]] = []
    clean: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(steps) * len(detectors), desc="robustness", unit="eval", file=sys.stderr,
              disable=not progress, leave=False) as bar:
        for name, level in steps:
            perturbed = images if name == CLEAN else apply_perturbation(images, name, level, seed=seed)
            if name == CLEAN:
                severity, param, label = 0, "", "clean"
            else:
                p = PERTURBATIONS[name]
                severity, param, label = p.severities.index(level) + 1, p.param, p.label(level)
            for det_name, det in detectors.items():
                bar.set_postfix_str(f"{det_name}: {label}", refresh=False)
                s = _score(labels, predict(det, perturbed, classes, batch_size), float(det.threshold))
                row = {"detector": det_name, "perturbation": name, "param": param,
                       "level": None if level is None else float(level), "severity": severity, "label": label,
                       **s}
                if name == CLEAN:
                    clean[det_name] = row
                base = clean[det_name]
                row["accuracy_drop"] = base["accuracy"] - row["accuracy"]
                row["roc_auc_drop"] = (base["roc_auc"] - row["roc_auc"]
                                       if base["roc_auc"] is not None and row["roc_auc"] is not None else None)
                rows.append({k: row.get(k) for k in ROW_FIELDS})
                bar.update(1)
    return rows


def most_fragile(rows: Sequence[Mapping[str, Any]], metric: str = "accuracy") -> dict[str, dict[str, Any]]:
    """Per detector: the perturbed row with the largest drop in `metric` (accuracy or roc_auc), the
    first of those that tie for it, with the others' labels as "tied_with"."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        d = r.get(f"{metric}_drop")
        if r["perturbation"] == CLEAN or d is None:
            continue
        best = out.get(r["detector"])
        if best is None or d > best[f"{metric}_drop"] + 1e-12:
            out[r["detector"]] = {**r, "tied_with": []}
        elif abs(d - best[f"{metric}_drop"]) <= 1e-12:
            best["tied_with"].append(r["label"])
    return out


# --------------------------------------------------------------------------- tables and figure

def wide_rows(rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per (perturbation, severity), one "accuracy / AUC" cell per detector."""
    detectors = list(dict.fromkeys(r["detector"] for r in rows))
    out: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["perturbation"], r["severity"])
        row = out.setdefault(key, {"perturbation": r["label"]})
        auc = "–" if r["roc_auc"] is None else f"{r['roc_auc']:.3f}"
        row[r["detector"]] = f"{r['accuracy']:.3f} / {auc}"
    return list(out.values()), detectors


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The wide table in Markdown: accuracy / ROC AUC of each detector per perturbation level."""
    from cifake_lib.analysis.compare import markdown_table

    wide, detectors = wide_rows(rows)
    columns = [("perturbation", "perturbation", "text")] + [(d, f"{d} (acc. / AUC)", "text") for d in detectors]
    return markdown_table(wide, columns)


def robustness_figure(rows: Sequence[Mapping[str, Any]], *, title: str = "Robustness") -> Figure:
    """Accuracy (top) and ROC AUC (bottom) against severity, one panel per perturbation.

    Severity 0 is the clean test set; each line is a detector.
    """
    if not rows:
        raise ValueError("robustness_figure: no rows")
    kinds = [k for k in dict.fromkeys(r["perturbation"] for r in rows) if k != CLEAN]
    detectors = list(dict.fromkeys(r["detector"] for r in rows))
    fig = Figure(figsize=(3.0 * max(1, len(kinds)) + 1.5, 6.2), layout="constrained")
    axes = fig.subplots(2, max(1, len(kinds)), squeeze=False, sharey="row")
    for j, kind in enumerate(kinds):
        for i, metric in enumerate(("accuracy", "roc_auc")):
            ax = axes[i, j]
            for k, det in enumerate(detectors):
                pts = [r for r in rows if r["detector"] == det and r["perturbation"] in (CLEAN, kind)]
                pts.sort(key=lambda r: r["severity"])
                ys = [np.nan if r[metric] is None else r[metric] for r in pts]
                ax.plot([r["severity"] for r in pts], ys, marker="o", color=f"C{k}",
                        label=det if (i, j) == (0, 0) else None)
            levels = [r for r in rows if r["perturbation"] == kind and r["detector"] == detectors[0]]
            levels.sort(key=lambda r: r["severity"])
            ax.set_xticks([0] + [r["severity"] for r in levels],
                          ["clean"] + [f"{r['level']:g}" for r in levels], fontsize="small")
            ax.grid(alpha=0.3)
            if i == 0:
                p = PERTURBATIONS.get(kind)
                ax.set_title(f"{kind} ({p.param})" if p else kind)
            if j == 0:
                ax.set_ylabel("accuracy" if metric == "accuracy" else "ROC AUC")
    fig.legend(loc="outside lower center", ncols=min(4, len(detectors)), fontsize="small")
    fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------- files

def write_robustness(out_dir: str | os.PathLike, rows: Sequence[Mapping[str, Any]], *,
                     meta: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write robustness.csv, robustness.json (rows + meta), robustness.md and robustness.png."""
    from cifake_lib.core.files import write_csv
    from cifake_lib.viz.plots import save_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / RESULTS_MD, "png": out / RESULTS_PNG, "json": out / RESULTS_JSON,
             "csv": out / RESULTS_CSV}
    write_text_atomic(paths["md"], markdown(rows))
    save_figure(robustness_figure(rows), paths["png"])
    write_json(paths["json"], {"created": utc_now(), **(meta or {}), "rows": list(rows)})
    write_csv(paths["csv"], rows, ROW_FIELDS)  # last: the pipeline treats it as "done"
    return paths


def read_robustness(path: str | os.PathLike) -> dict[str, Any]:
    """robustness.json (or a folder holding it) -> {"rows": [...], ...meta, "path"}."""
    path = Path(path)
    file = path / RESULTS_JSON if path.is_dir() else path
    record = read_json(file)
    if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
        raise ValueError(f"{file}: not a robustness.json (no 'rows' list)")
    missing = [f for f in ("detector", "perturbation", "severity", "accuracy") if record["rows"]
               and f not in record["rows"][0]]
    if missing:
        raise ValueError(f"{file}: rows lack field(s) {missing}")
    return {**record, "path": file}


def find_robustness(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Every robustness.json under `paths` (recursive), sorted."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: set[Path] = set()
    for root in map(Path, paths):
        if root.is_file() and root.name == RESULTS_JSON:
            found.add(root.resolve())
        elif root.is_dir():
            found |= {p.resolve() for p in root.rglob(RESULTS_JSON)}
    return sorted(found)


def load_run_detectors(runs: Sequence[Mapping[str, Any]], device: Any = None, *,
                       strict: bool = True) -> dict[str, Any]:
    """{run name: detector} for read_run dicts (named by compare.load_runs), via load_detector.

    strict False: runs whose detector cannot be loaded (weights or model missing) are left out,
    with a warning, instead of raising.
    """
    import warnings

    from cifake_lib.methods.detectors import load_detector

    out = {}
    for r in runs:
        try:
            out[r["name"]] = load_detector(r["path"], device=device)
        except (OSError, ValueError) as e:
            if strict:
                raise
            warnings.warn(f"{r['name']}: detector not loadable, left out ({e})", stacklevel=2)
    return out


def robustness_from_runs(run_dirs: Sequence[str | os.PathLike], split: Any, out_dir: str | os.PathLike, *,
                         perturbations: Sequence[str] | None = None, seed: int = 0, batch_size: int = 256,
                         device: Any = None, data: str = "", progress: bool = True) -> list[dict[str, Any]]:
    """The whole step: find the runs (one zero-shot prompt set per model, chosen on validation),
    load their detectors, run the battery on `split`, write the results into `out_dir`."""
    from cifake_lib.analysis.compare import load_runs, select_runs

    t0 = time.perf_counter()
    runs, notes = select_runs(load_runs(run_dirs, predictions=False))
    if not runs:
        raise FileNotFoundError(f"no run folders (with a test metrics.json) under {', '.join(map(str, run_dirs))}")
    detectors = load_run_detectors(runs, device)
    rows = run_battery(detectors, split, perturbations=perturbations, seed=seed, batch_size=batch_size,
                       progress=progress)
    write_robustness(out_dir, rows, meta={
        "data": data, "n": len(split), "seed": seed, "seconds": time.perf_counter() - t0,
        "runs": {r["name"]: str(r["path"]) for r in runs}, "notes": notes,
        "perturbations": {name: {"param": PERTURBATIONS[name].param,
                                 "severities": list(PERTURBATIONS[name].severities),
                                 "description": PERTURBATIONS[name].description}
                          for name in (perturbations or PERTURBATIONS)},
    })
    return rows


def run(data: DataConfig | CifakeData, cfg: RobustnessConfig, out: str | os.PathLike) -> RunResult:
    """Every detector of `cfg.runs` under the perturbation battery, on (a stratified part of) test."""
    from cifake_lib.data.load import stratified_subset

    t0 = time.perf_counter()
    cfg.check()
    cifake, dcfg = loaded(data)
    seed = dcfg.seed if dcfg else 0
    test = cifake.test
    if cfg.limit is not None and cfg.limit < len(test):
        test = stratified_subset(test, cfg.limit, seed=seed)
    rows = robustness_from_runs(cfg.runs, test, out, perturbations=cfg.perturbations, seed=seed,
                                batch_size=cfg.batch_size, device=cfg.device, data=cifake.source)
    return RunResult("robustness", Path(out), seconds=time.perf_counter() - t0, info={"rows": rows, "n": len(test)})
