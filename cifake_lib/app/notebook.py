"""What a notebook works on: the runs of a `cifake run` study, or its own runs folder.

Every notebook's set-up cell calls `notebook_context()`:

- under `cifake run --notebooks` the kernel sees CIFAKE_STUDY=<the study folder>. The notebook
  loads the study's data (same source, subset, validation split and seed), uses the study's
  CLIP model and reads the study's run folders (`OUT/zeroshot`, `OUT/probe`, `OUT/finetune`,
  ...). It trains nothing and writes no run: one study, one set of results;
- run on its own, a notebook writes its runs under CIFAKE_RUNS (default `runs`) and trains what
  is missing, with the notebook's own data subset.

The run folders have the same names in both cases (the pipeline's step names), so a notebook
reads `ctx.runs / "probe"` either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifake_lib.analysis.config import ReportConfig
from cifake_lib.core.config import build, options
from cifake_lib.core.errors import CifakeError
from cifake_lib.core.files import default_data_source, smoke_mode
from cifake_lib.core.settings import study_folder
from cifake_lib.data.config import DataConfig
from cifake_lib.evaluation.study import RUNS_DIR, read_study

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData

STUDY_ENV = "CIFAKE_STUDY"  # set by `cifake run --notebooks` for the notebook kernels
RUNS_ENV = "CIFAKE_RUNS"
TINY_FOLDER = "tiny_clip"  # smoke mode on its own: the tiny CLIP, written once under the runs folder


class NotAStudy(CifakeError):
    """CIFAKE_STUDY names a folder that holds no study.json."""


@dataclass(frozen=True)
class NotebookContext:
    """Where a notebook's data, model and runs come from (see the module docstring)."""

    smoke: bool
    source: str  # the CIFAKE source: the study's, else $CIFAKE_DATA, else the Hugging Face mirror
    runs: Path  # the run folders are read here (and, without a study, written here)
    study: Path | None = None  # the `cifake run` folder whose runs are read, or None
    study_data: DataConfig | None = None  # the study's data settings (subset, validation, seed)
    model: str | None = None  # the study's CLIP model (None on its own: see clip_model)
    layout: dict[str, Any] = field(default_factory=dict)  # study.json "layout"
    report_table: dict[str, Any] = field(default_factory=dict)  # the study's [report] settings

    @property
    def reads_study(self) -> bool:
        """True under `cifake run --notebooks`: read the study's runs, train and write nothing."""
        return self.study is not None

    def data_config(self, *, subset: tuple[int, int] | None = None, val_fraction: float = 0.1,
                    seed: int = 0) -> DataConfig:
        """The study's data settings; on its own, the notebook's `subset`, `val_fraction` and `seed`."""
        if self.study_data is not None:
            return self.study_data
        return build(DataConfig, {"data": self.source, "subset": subset, "val_fraction": val_fraction,
                                  "seed": seed}, where="notebook data")

    def load_data(self, *, subset: tuple[int, int] | None = None, val_fraction: float = 0.1, seed: int = 0,
                  progress: bool = True) -> CifakeData:
        """CIFAKE as the study loaded it; on its own, with the notebook's `subset`, `val_fraction`, `seed`.

        Decoded once and cached on disk; a line says which settings were used.
        """
        from cifake_lib.data.config import load_data

        cfg = self.data_config(subset=subset, val_fraction=val_fraction, seed=seed)
        size = "all" if cfg.subset is None else f"{cfg.subset[0]:,}:{cfg.subset[1]:,}"
        print(f"data: {cfg.data} | subset {size}, validation fraction {cfg.val_fraction:g}, seed {cfg.seed}"
              + (" (the study's)" if self.study_data is not None else ""))
        return load_data(cfg, progress=progress)

    def clip_model(self) -> str:
        """The study's CLIP model; on its own, the tiny offline CLIP in smoke mode, else ViT-B/32."""
        if self.study is not None:
            if self.model is None:  # never write a model into a study: it is read only here
                raise CifakeError(f"{self.study / 'study.json'} records no model; run `cifake run` again")
            return _study_model(self.study, self.model)
        from cifake_lib.clip.models import DEFAULT_MODEL
        from cifake_lib.clip.tiny import write_tiny_clip

        if not self.smoke:
            return DEFAULT_MODEL
        # Under the runs folder and written once: the runs keep pointing at it after a restart.
        tiny = self.runs / TINY_FOLDER
        return str(tiny if (tiny / "config.json").is_file() else write_tiny_clip(tiny))

    def run_dir(self, name: str) -> Path:
        """Where method `name`'s run is: the study's main run of it (the first training seed's),
        or `runs / name` on its own. It may not exist yet."""
        if self.study is None:
            return self.runs / name
        return self.study / self.layout.get("main_runs", {}).get(name, f"{RUNS_DIR}/{name}")

    def study_run(self, name: str) -> Path:
        """The study's run folder `name` (e.g. "probe"); a clear error when the study did not run it."""
        if self.study is None:
            raise ValueError("study_run: no study (CIFAKE_STUDY is not set); use ctx.runs / name")
        folder = self.run_dir(name)  # the main cell's run, e.g. "runs/probe_seed1": study.json says
        if not folder.is_dir():
            planned = ", ".join(self.layout.get("trained_runs", [])) or "none"
            raise CifakeError(f"the study at {self.study} has no '{name}' run folder (its trained runs: "
                              f"{planned}); run `cifake run` with that stage, or run this notebook on its own")
        return folder

    def report_config(self, **own: Any) -> ReportConfig:
        """The study's report settings (bootstrap resamples, gallery size, embedding sample), so that
        notebook 04 shows the numbers of the study's report.md; on its own, `own` over the defaults."""
        values = dict(own) if self.study is None else {
            k: v for k, v in self.report_table.items() if k in {f.name for f in fields(ReportConfig)}}
        return build(ReportConfig, {**values, "runs": [str(p) for p in self.report_inputs()]},
                     where="notebook report settings")

    def report_inputs(self) -> list[Path]:
        """The folders notebook 04 analyses: the study's report inputs (the leak-free evaluations,
        robustness and the runs they score), or the whole runs folder."""
        if self.study is None or not self.layout.get("report_runs"):
            return [self.runs]
        return [self.study / d for d in self.layout["report_runs"]]

    @property
    def study_roots(self) -> list[Path]:
        """The study folder, whose index (runs.csv) lists every run of its grid; none on its own."""
        return [self.study] if self.study is not None else []

    def describe(self) -> str:
        """One line for the notebook's output: what is read, and what will be written."""
        where = (f"runs: the study's, in {self.study} (read only: nothing is trained or written)" if self.study
                 else f"runs: written and read in {self.runs}")
        return f"smoke mode: {self.smoke} | data: {self.source}\n{where}"


def _study_model(study: Path, model: str) -> str:
    """The study's model as recorded: a folder relative to the study (the smoke preset's tiny
    CLIP), a folder elsewhere, or a Hub id; a folder recorded by an older study that has moved
    since is looked for inside the study under its own name."""
    from cifake_lib.core.paths import resolve_recorded

    found = resolve_recorded(model, study)
    if found is not None:
        return str(found)
    inside = study / Path(model).name
    if (inside / "config.json").is_file():
        return str(inside)
    return model  # a Hugging Face id (or a folder elsewhere, as recorded)


def _study_context(folder: Path, smoke: bool) -> NotebookContext:
    record = read_study(folder)
    if record is None:
        raise NotAStudy(f"{STUDY_ENV}={folder}: no study.json there (a folder written by `cifake run`)")
    values = {k: v for k, v in (record.get("config") or {}).get("data", {}).items() if k in _DATA_KEYS}
    data = build(DataConfig, {**values, "data": record["data"]}, where=f"{folder / 'study.json'} [data]")
    return NotebookContext(smoke=smoke, source=record["data"], runs=folder, study=folder, study_data=data,
                           model=record.get("model"), layout=record.get("layout") or {},
                           report_table=(record.get("config") or {}).get("report", {}))


# The study's data settings a notebook takes (the source is the study's own "data" field).
_DATA_KEYS = {o.key for o in options(DataConfig)} - {"data"}


def notebook_context() -> NotebookContext:
    """The context of the running notebook, from the environment.

    With CIFAKE_STUDY set: the study's data, model and runs. Otherwise: data from $CIFAKE_DATA
    (else the Hugging Face mirror), runs under $CIFAKE_RUNS (default `runs`).
    """
    smoke = smoke_mode()
    study = study_folder()  # $CIFAKE_STUDY (STUDY_ENV)
    if study is not None:
        return _study_context(study.resolve(), smoke)
    return NotebookContext(smoke=smoke, source=default_data_source(), runs=Path(os.environ.get(RUNS_ENV, "runs")))


__all__ = ["NotAStudy", "NotebookContext", "RUNS_ENV", "STUDY_ENV", "notebook_context"]
