"""The table of the study's stages: each a method `run(data, cfg, out) -> RunResult` and its settings.

`cifake <stage>` and `cifake run` (`pipeline.py`) both call a stage's `run`, so a stage behaves
the same from either. The functions live with their methods (`methods.probe.run`, ...) and are
imported when called: importing this module (as `cifake --help` does) imports no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cifake_lib.analysis.config import ReportConfig, ReportData, RobustnessConfig
from cifake_lib.core.config import build
from cifake_lib.core.results import RunResult
from cifake_lib.data.config import DataConfig
from cifake_lib.data.stage import SUMMARY
from cifake_lib.methods.cnn_config import CnnStageConfig
from cifake_lib.methods.config import EvaluateConfig, ProbeConfig, ZeroshotConfig
from cifake_lib.methods.finetune_config import FinetuneConfig

TRAIN_SEED = "train_seed"


@dataclass(frozen=True)
class Stage:
    """A stage: its settings classes (the first is its own), where its `run` lives, whether it trains."""

    name: str
    classes: tuple[type, ...]  # settings of the command besides the data's
    module: str  # the module whose `run(data, cfg, out)` is the stage
    reads_data: bool = True  # takes the DataConfig options
    trains: bool = False  # repeated per training seed and training-set size by the study grid

    @property
    def option_classes(self) -> tuple[type, ...]:
        """Every settings class of the stage's command: the data's (when it reads data), then its own."""
        return ((DataConfig,) if self.reads_data else ()) + self.classes

    def run(self, data: Any, cfg: Any, out: Any) -> RunResult:
        """The stage's method, imported now (torch and friends load here, not at import)."""
        return importlib.import_module(self.module).run(data, cfg, out)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("data", (), "cifake_lib.data.stage"),
    Stage("zeroshot", (ZeroshotConfig,), "cifake_lib.methods.zeroshot"),
    Stage("probe", (ProbeConfig,), "cifake_lib.methods.probe", trains=True),
    Stage("finetune", (FinetuneConfig,), "cifake_lib.methods.finetune", trains=True),
    Stage("cnn", (CnnStageConfig,), "cifake_lib.methods.cnn", trains=True),
    Stage("evaluate", (EvaluateConfig,), "cifake_lib.methods.evaluate"),
    Stage("robustness", (RobustnessConfig,), "cifake_lib.analysis.robustness"),
    Stage("report", (ReportConfig, ReportData), "cifake_lib.analysis.report_stage", reads_data=False),
)}


def stage_config(stage: str, values: Mapping[str, Any], data: DataConfig | None, *, where: str = "",
                 flag_names: bool = False) -> Any:
    """The stage's settings from {key: value}, checked; the training seed defaults to the data seed."""
    s = STAGES[stage]
    if not s.classes:
        return None
    defaults = {TRAIN_SEED: data.seed} if data is not None else None
    return build(s.classes[0], values, where=where, defaults=defaults, flag_names=flag_names)


__all__ = ["STAGES", "SUMMARY", "TRAIN_SEED", "Stage", "stage_config"]
