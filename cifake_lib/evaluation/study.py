"""What a stage returns (`StageResult`) and how a `cifake run` output folder describes itself.

Light on purpose (no numpy, no torch): the command line imports it to build its parser.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STUDY = "study.json"  # a `cifake run` output folder's own settings and layout
OLD_STUDY = "config.json"  # its name before: read for existing studies (a model folder has one too)


@dataclass
class StageResult:
    """What one stage did: the run folders it wrote, their test metrics, its wall time.

    status: "complete", or "stopped" when a run paused on purpose (fine-tuning's stop_after)
    and will continue on resume. info: the stage's own facts (the prompt set chosen on
    validation, the probe's C, the training outcome, the data summary, robustness rows...).
    """

    stage: str
    out: Path | None
    runs: list[Path] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # run name -> metrics.json record
    seconds: float = 0.0
    status: str = "complete"
    info: dict[str, Any] = field(default_factory=dict)


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


__all__ = ["OLD_STUDY", "STUDY", "StageResult", "is_study_record", "read_study"]
