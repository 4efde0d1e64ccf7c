"""`cifake data` as a stage: load (decode and cache once), audit and summarise.

`run(data, cfg, out)` like every method; the data stage has no settings beyond the data's own
(`cfg` is None). OUT/summary.json when `out` is given.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cifake_lib.core.results import RunResult
from cifake_lib.data.config import DataConfig, loaded

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData

SUMMARY = "summary.json"


def run(data: DataConfig | CifakeData, cfg: None = None, out: str | os.PathLike | None = None) -> RunResult:
    """The data summary (`.info["summary"]`), written to OUT/summary.json when `out` is given."""
    from cifake_lib.core.files import write_json
    from cifake_lib.data.load import summarize

    t0 = time.perf_counter()
    cifake, _ = loaded(data)
    summary = summarize(cifake)
    if out is not None:
        write_json(Path(out) / SUMMARY, summary)
    return RunResult("data", Path(out) if out else None, seconds=time.perf_counter() - t0,
                     info={"summary": summary})


__all__ = ["SUMMARY", "run"]
