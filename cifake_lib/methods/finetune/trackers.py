"""Training curves through Accelerate's trackers, as transformers' Trainer and Accelerate users expect.

`log_with` (FinetuneConfig): "auto" logs to TensorBoard when it can be imported (torch's
`tensorboard` or `tensorboardX`; Colab has it) and to a CSV file otherwise; "tensorboard" insists;
"csv" always writes the CSV; "none" logs nothing beyond history.json. Everything goes under
OUT/logs/: TensorBoard's event files in OUT/logs/finetune/ (`tensorboard --logdir OUT/logs`), the
CSV as OUT/logs/scalars.csv with one row per value (step, tag, value), train/* every `log_every`
steps and val/* at each evaluation. The settings are stored once per invocation (TensorBoard's
hparams; OUT/logs/config.json). history.json stays the record the library itself reads.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cifake_lib.methods.finetune_config import FinetuneConfig

PROJECT = "finetune"
CSV_FILE = "scalars.csv"


def tensorboard_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def _csv_tracker_class() -> type:
    from accelerate.tracking import GeneralTracker, on_main_process

    class CsvTracker(GeneralTracker):
        """Accelerate tracker writing OUT/logs/scalars.csv (step, tag, value), appended and flushed."""

        name = "csv"
        requires_logging_directory = True

        def __init__(self, run_name: str, logging_dir: str | os.PathLike):
            super().__init__()
            self.folder = Path(logging_dir)

        @on_main_process
        def start(self) -> None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.path = self.folder / CSV_FILE
            new = not self.path.is_file()
            self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (kept open: the run's log)
            self._writer = csv.writer(self._file)
            if new:
                self._writer.writerow(["step", "tag", "value"])

        @property
        def tracker(self) -> Any:
            return self._writer

        @on_main_process
        def store_init_configuration(self, values: dict) -> None:
            (self.folder / "config.json").write_text(json.dumps(values, indent=2, default=str) + "\n")

        @on_main_process
        def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
            for tag, value in values.items():
                self._writer.writerow([step, tag, value])
            self._file.flush()

        @on_main_process
        def finish(self) -> None:
            self._file.close()

    return CsvTracker


def trackers(cfg: FinetuneConfig) -> list[Any] | None:
    """Accelerator(log_with=...) for `cfg.log_with`; None when nothing is to be logged (or no OUT)."""
    mode = cfg.log_with
    if mode == "none" or not cfg.out:
        return None
    if mode == "tensorboard" and not tensorboard_available():
        raise ValueError("log_with=tensorboard: neither tensorboard nor tensorboardX is installed "
                         "(pip install tensorboard), or use log_with=csv")
    if mode in ("auto", "tensorboard") and tensorboard_available():
        return ["tensorboard"]
    return [_csv_tracker_class()(PROJECT, Path(cfg.out) / "logs")]


def start_trackers(accelerator: Any, cfg: FinetuneConfig) -> None:
    """init_trackers with the run's settings as flat scalars (what TensorBoard's hparams accept)."""
    if not accelerator.log_with:
        return
    flat = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in cfg.to_dict().items()}
    accelerator.init_trackers(PROJECT, config=flat)


__all__ = ["CSV_FILE", "PROJECT", "start_trackers", "tensorboard_available", "trackers"]
