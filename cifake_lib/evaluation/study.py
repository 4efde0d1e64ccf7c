"""How a `cifake run` output folder describes itself: study.json and the grid's index runs.csv.

A study is a grid of runs. Each run has a key (method, model, train_size, seed, image_size); its folder is
named from the key by one rule (`run_folder`); OUT/runs.csv, the index, has one row per run
(key columns, run folder, status, seconds, headline metrics) and is rewritten atomically as
runs finish. Robustness, the report, the notebooks and `predict --model STUDY` read the index,
never folder-name conventions (docs/architecture.md, "The study grid and its index").

Light on purpose (no numpy, no torch): the command line imports it to build its parser.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STUDY = "study.json"  # a `cifake run` output folder's own settings and layout
OLD_STUDY = "config.json"  # its name before: read for existing studies (a model folder has one too)
INDEX = "runs.csv"  # the grid's index: one row per run
RUNS_DIR = "runs"  # under OUT: one folder per run of the grid
KEY_COLUMNS = ("method", "model", "train_size", "seed", "image_size")
# What each run cost (`methods/cost.py`, metrics.json "cost"), as index columns.
COST_COLUMNS = ("trainable_params", "total_params", "peak_memory_bytes", "peak_memory_kind", "train_seconds",
                "train_images_per_second", "device_seconds_per_1k_images")
INDEX_COLUMNS = (*KEY_COLUMNS, "stage", "run_dir", "status", "reason", "seconds", "accuracy", "roc_auc",
                 "leak_free_accuracy", "leak_free_roc_auc", *COST_COLUMNS, "evaluated_dir", "command")
SKIPPED = "skipped"  # the status of a run the grid cannot make (e.g. zero-shot on an image-only backbone)
ALL = "all"  # train_size of a run on the whole training split
OWN = "own"  # image_size of a run at its backbone's own input size ([run] image_sizes may name it)


@dataclass(frozen=True)
class RunKey:
    """Where a run sits in the grid. model None: the method has no backbone (the CNN); train_size
    None: the whole training split; seed None: nothing is trained (zero-shot); image_size None: the
    backbone's own input size."""

    method: str
    model: str | None
    train_size: int | None
    seed: int | None
    image_size: int | None = None

    def folder(self, defaults: RunKey) -> str:
        """The run's folder under OUT/runs, by one rule: the method, then each axis whose value
        differs from the study's default for it (`defaults`), so adding a value to an axis never
        renames a run that exists: `flyp`, `flyp_n500`, `flyp_n500_seed1`, `probe_m-vit-b-16`, `flyp_r64`."""
        parts = [self.method]
        if self.model is not None and self.model != defaults.model:
            parts.append(f"m-{model_slug(self.model)}")
        if self.train_size is not None and self.train_size != defaults.train_size:
            parts.append(f"n{self.train_size}")
        if self.seed is not None and self.seed != defaults.seed:
            parts.append(f"seed{self.seed}")
        if self.image_size is not None and self.image_size != defaults.image_size:
            parts.append(f"r{self.image_size}")
        return "_".join(parts)

    def row(self) -> dict[str, Any]:
        """The key as runs.csv cells ("" where an axis does not apply, "all" for the whole split)."""
        return {"method": self.method, "model": "" if self.model is None else self.model,
                "train_size": "" if self.seed is None else (ALL if self.train_size is None else self.train_size),
                "seed": "" if self.seed is None else self.seed,
                "image_size": "" if self.image_size is None else self.image_size}


def model_slug(model: str) -> str:
    """A model id or folder as a folder-name part: its last two path parts, lower case, [a-z0-9.-]."""
    parts = [p for p in re.split(r"[\\/]+", str(model)) if p not in ("", ".", "..")]
    text = "-".join(parts[-2:]) if parts else "model"
    return re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-") or "model"


def read_index(study: str | os.PathLike) -> list[dict[str, str]]:
    """OUT/runs.csv as rows of strings ([] when the study has none)."""
    path = Path(study) / INDEX
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def index_runs(study: str | os.PathLike, *, complete: bool = True, **where: Any) -> list[Path]:
    """The run folders of the index (absolute) whose key cells equal `where` (e.g. method="flyp",
    seed=0); only complete runs unless complete=False."""
    root = Path(study)
    want = {k: "" if v is None else str(v) for k, v in where.items()}
    return [root / r["run_dir"] for r in read_index(root)
            if (not complete or r.get("status") == "complete") and all(r.get(k) == v for k, v in want.items())]


def main_runs(study: str | os.PathLike) -> dict[str, str]:
    """{method: run folder relative to the study} of the study's main cell (its first model, largest
    training set and first seed), as study.json records it; also keyed by stage for the first
    method of each stage ("finetune" -> the main fine-tune), which is how notebooks ask for one."""
    record = read_study(study) or {}
    return dict((record.get("layout") or {}).get("main_runs") or {})


def is_study_record(record: Any) -> bool:
    """True for a study's own settings: a dict with "preset" and "config" (a CLIP model folder's
    config.json, read by the same name in older studies, has "model_type" instead)."""
    return isinstance(record, dict) and "preset" in record and "config" in record and "model_type" not in record


def read_study(folder: str | os.PathLike) -> dict[str, Any] | None:
    """A study folder's study.json (or, for studies written before, its config.json); None if not a study.

    Keys: preset, config_file, data, model, config (the merged TOML tables) and, from this
    version on, "layout": {"detectors": [...], "seed_runs": {seed: [...]}, "evaluated": [...],
    "robustness": ...}, paths relative to the folder.
    """
    folder = Path(folder)
    for name in (STUDY, OLD_STUDY):
        path = folder / name
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if is_study_record(record):
                return record
    return None


__all__ = ["OWN", "ALL", "SKIPPED", "COST_COLUMNS", "INDEX", "INDEX_COLUMNS", "KEY_COLUMNS", "OLD_STUDY", "RUNS_DIR", "STUDY", "RunKey", "index_runs",
           "is_study_record", "main_runs", "model_slug", "read_index", "read_study"]
