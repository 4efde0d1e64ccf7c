"""What every method returns (`RunResult`) and the settings its run.json records.

Every method of the study is `run(data, cfg, out) -> RunResult`: `data` the data it reads (a
`DataConfig`, or an already loaded `CifakeData`), `cfg` its settings dataclass (the only
signature: the same fields are its command's options and its TOML table's keys), `out` the
folder it writes. Light on purpose (no numpy, no torch): the command line imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifake_lib.core.config import to_mapping


@dataclass
class RunResult:
    """What one method (or stage) did: the run folders it wrote, their test metrics, its wall time.

    status: "complete", or "stopped" when a run paused on purpose (fine-tuning's stop_after)
    and continues on resume. info: the method's own facts (the prompt set chosen on
    validation, the probe's C, the training outcome, the data summary, robustness rows...).
    """

    stage: str
    out: Path | None
    runs: list[Path] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # run name -> metrics.json record
    seconds: float = 0.0
    status: str = "complete"
    info: dict[str, Any] = field(default_factory=dict)


def settings_record(command: str, *configs: Any, out: str | os.PathLike | None = None) -> dict[str, Any]:
    """run.json's "args": the command, every setting of each settings dataclass given (None skipped),
    and the output folder. Built from the dataclasses only, so a run records what it was given."""
    record: dict[str, Any] = {"command": command}
    for cfg in configs:
        if cfg is not None:
            record.update(to_mapping(cfg))
    record["out"] = None if out is None else str(out)
    return record


__all__ = ["RunResult", "settings_record"]
