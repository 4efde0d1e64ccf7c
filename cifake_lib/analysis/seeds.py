"""Training-seed variation: each detector's test metrics as mean, sd and each seed's value.

`cifake run --seeds 0,1,2` trains every trained detector once per seed on the same data split
(the data seed stays fixed), so the spread here is training variance only; the confidence
intervals in metrics.json cover test sampling. sd is the sample standard deviation (n - 1),
empty for one seed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SEEDS_CSV = "seeds.csv"
# metric name -> how to read it from a metrics.json record
SEED_METRICS: dict[str, tuple[str, ...]] = {
    "accuracy": ("accuracy",),
    "accuracy@0.5": ("natural_threshold", "accuracy"),
    "roc_auc": ("roc_auc",),
    "average_precision": ("average_precision",),
    "f1": ("f1",),
    "ece": ("ece",),
    "brier": ("brier",),
}


def _read(record: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = record
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return None if value is None else float(value)


def seed_rows(records: Iterable[Mapping[str, Any]],
              metrics: Mapping[str, tuple[str, ...]] = SEED_METRICS) -> list[dict[str, Any]]:
    """One row per (detector, metric): detector, metric, mean, sd, n_seeds and `seed_<s>` per seed.

    records: metrics.json dicts, each with "detector" and "seed" (its training seed). Two
    records of one detector with the same seed are an error (the same run counted twice).
    """
    by_detector: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in records:
        det, seed = str(r["detector"]), int(r["seed"])
        runs = by_detector.setdefault(det, {})
        if seed in runs:
            raise ValueError(f"detector {det!r} has two runs with seed {seed}")
        runs[seed] = r
    rows = []
    for det, runs in by_detector.items():
        for name, path in metrics.items():
            values = {s: _read(r, path) for s, r in sorted(runs.items())}
            known = [v for v in values.values() if v is not None and math.isfinite(v)]
            n = len(known)
            mean = sum(known) / n if n else None
            sd = math.sqrt(sum((v - mean) ** 2 for v in known) / (n - 1)) if n > 1 else None
            rows.append({"detector": det, "metric": name, "mean": mean, "sd": sd, "n_seeds": n,
                         **{f"seed_{s}": v for s, v in values.items()}})
    return rows


def write_seed_table(run_dirs: Sequence[str | os.PathLike], path: str | os.PathLike,
                     names: Sequence[str] | None = None) -> Path:
    """seeds.csv from run folders (each with a test metrics.json); returns its path. names: what to
    group them by (a study's method names: FLYP and its CE ablation are both "finetune:both"),
    default each run's detector."""
    from cifake_lib.core.files import write_csv
    from cifake_lib.evaluation.runs import read_run

    records = [read_run(d, predictions=False)["metrics"] for d in run_dirs]
    if names is not None:
        records = [{**r, "detector": n} for r, n in zip(records, names, strict=True)]
    rows = seed_rows(records)
    seeds = sorted({int(k[5:]) for r in rows for k in r if k.startswith("seed_")})
    columns = ["detector", "metric", "mean", "sd", "n_seeds", *(f"seed_{s}" for s in seeds)]
    return write_csv(path, rows, columns)


__all__ = ["SEEDS_CSV", "SEED_METRICS", "seed_rows", "write_seed_table"]
