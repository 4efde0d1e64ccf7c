"""The study's stages in one form: `run_<stage>(data, cfg, out) -> StageResult`.

`data` is what the stage reads: a `DataConfig` (loaded here, with the data seed known) or an
already loaded `CifakeData`; for the report, the CIFAKE source its galleries show. `cfg` is
the stage's settings dataclass, `out` the folder it writes. `cifake <stage>` and `cifake run`
(`pipeline.py`) both call these functions, so a stage behaves the same from either.

The library functions they call (`methods.zeroshot.run_zeroshot`, `methods.finetune.finetune`,
...) keep their own keyword signatures for notebooks. Heavy imports stay inside the functions:
importing this module (as `cifake --help` does) imports no torch.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifake_lib.analysis.config import ReportConfig, ReportData, RobustnessConfig
from cifake_lib.core.config import build, to_mapping
from cifake_lib.core.errors import CifakeError
from cifake_lib.data.config import DataConfig, load_data
from cifake_lib.evaluation.study import StageResult, read_study
from cifake_lib.methods.cnn_config import CnnStageConfig
from cifake_lib.methods.config import EvaluateConfig, ProbeConfig, ZeroshotConfig
from cifake_lib.methods.finetune_config import FinetuneConfig

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData

SUMMARY = "summary.json"
TRAIN_SEED = "train_seed"


def _data(data: DataConfig | CifakeData, *, progress: bool = True) -> tuple[CifakeData, DataConfig | None]:
    if isinstance(data, DataConfig):
        return load_data(data, progress=progress), data
    return data, None


def _record(stage: str, dcfg: DataConfig | None, cfg: Any, out: Path | None) -> dict[str, Any]:
    """The settings a run folder's run.json records: data, the stage's own, the output folder."""
    return {"command": stage, **(to_mapping(dcfg) if dcfg is not None else {}),
            **(to_mapping(cfg) if cfg is not None else {}), "out": None if out is None else str(out)}


def run_data(data: DataConfig | CifakeData, cfg: None = None, out: str | os.PathLike | None = None) -> StageResult:
    """Load (decode and cache once), audit and summarise; OUT/summary.json when `out` is given.

    The data stage has no settings beyond the data's own (`cfg` is None: the common form).
    """
    from cifake_lib.core.files import write_json
    from cifake_lib.data.load import summarize

    t0 = time.perf_counter()
    loaded, _ = _data(data)
    summary = summarize(loaded)
    if out is not None:
        write_json(Path(out) / SUMMARY, summary)
    return StageResult("data", Path(out) if out else None, seconds=time.perf_counter() - t0,
                       info={"summary": summary})


def run_zeroshot(data: DataConfig | CifakeData, cfg: ZeroshotConfig, out: str | os.PathLike) -> StageResult:
    """Every prompt set: one run folder each under `out`, plus summary.csv (best set on validation)."""
    from cifake_lib.methods.zeroshot import folder_name
    from cifake_lib.methods.zeroshot import run_zeroshot as zeroshot

    cfg.check()
    loaded, dcfg = _data(data)
    out = Path(out)
    r = zeroshot(loaded, out, model=cfg.model, prompts=cfg.prompts, batch_size=cfg.batch_size, device=cfg.device,
                 cache=cfg.cache, figures=cfg.figures, marginal=cfg.marginal, args=_record("zeroshot", dcfg, cfg, out))
    runs = [out / folder_name(row["prompt_set"]) for row in r.rows]
    return StageResult("zeroshot", out, runs=runs, metrics=r.metrics, seconds=r.seconds,
                       info={"best": r.best, "rows": r.rows})


def run_probe(data: DataConfig | CifakeData, cfg: ProbeConfig, out: str | os.PathLike) -> StageResult:
    """A linear (or MLP) probe on frozen CLIP image features, its hyper-parameter chosen on validation."""
    from cifake_lib.methods.probe import run_probe as probe

    t0 = time.perf_counter()
    loaded, dcfg = _data(data)
    out = Path(out)
    if cfg.layers:  # hook (issue 19): the layer-wise probe, methods.layer_probe
        from cifake_lib.methods.layer_probe import run_layer_probe

        m = run_layer_probe(loaded, cfg, out, args=_record("probe", dcfg, cfg, out))
        return StageResult("probe", out, runs=[out], metrics={m["detector"]: m}, seconds=time.perf_counter() - t0,
                           info={"layer": m["layer"], "C": m["C"], "selection": m["selection"]})
    m = probe(loaded, out, model=cfg.model, mlp=cfg.mlp, hidden=(cfg.hidden,), batch_size=cfg.batch_size,
              device=cfg.device, cache=cfg.cache, figures=cfg.figures, seed=cfg.train_seed,
              args=_record("probe", dcfg, cfg, out))
    key = "alpha" if cfg.mlp else "C"
    return StageResult("probe", out, runs=[out], metrics={m["detector"]: m}, seconds=time.perf_counter() - t0,
                       info={key: m[key], "selection": m["selection"], "feature_seconds": m["feature_seconds"]})


def run_finetune(data: DataConfig | CifakeData, cfg: FinetuneConfig, out: str | os.PathLike) -> StageResult:
    """Fine-tune CLIP (or resume it), then score the best model; status "stopped" after stop_after.

    Raises `TrainingDiverged` / `OutOfMemory` (methods.finetune) when training cannot go on.
    """
    from cifake_lib.methods.finetune import finetune, resolve_prompts

    t0 = time.perf_counter()
    out = Path(out)
    cfg = dataclasses.replace(cfg, out=str(out),
                              data=data.data if isinstance(data, DataConfig) else getattr(data, "source", None))
    cfg.validate()
    resolve_prompts(cfg.prompts)  # a bad prompt set fails before data or model load
    loaded, dcfg = _data(data, progress=cfg.progress)
    r = finetune(loaded, cfg, args=_record("finetune", dcfg, cfg, out))
    o = r.outcome
    outcome = {"status": o.status, "step": o.step, "total_steps": o.total_steps, "best_step": o.best_step,
               "best_val_auc": o.best_val_auc, "images_per_second": o.images_per_second}
    stopped = r.metrics is None and o.status == "stopped"
    return StageResult("finetune", out, runs=[] if r.metrics is None else [out],
                       metrics={} if r.metrics is None else {r.metrics["detector"]: r.metrics},
                       seconds=time.perf_counter() - t0, status="stopped" if stopped else "complete",
                       info={"outcome": outcome, "train": cfg.train, "main_process": os.environ.get("RANK", "0") == "0"})


def run_cnn(data: DataConfig | CifakeData, cfg: CnnStageConfig, out: str | os.PathLike) -> StageResult:
    """The CIFAKE paper's CNN trained on train, its epoch chosen on validation."""
    from cifake_lib.methods.cnn import run_cnn as cnn

    t0 = time.perf_counter()
    loaded, dcfg = _data(data)
    out = Path(out)
    m = cnn(loaded, out, config=cfg.net, train_config=cfg.train, device=cfg.device, args=_record("cnn", dcfg, cfg, out))
    extra = ("best_epoch", "epochs_run", "train_seconds", "images_per_second")
    return StageResult("cnn", out, runs=[out], metrics={"cnn": {k: v for k, v in m.items() if k not in extra}},
                       seconds=time.perf_counter() - t0, info={k: m[k] for k in extra})


def load_detector_or_fail(name: str, device: str | None) -> Any:
    """`methods.detectors.load_detector`, its failures as one CifakeError naming --model."""
    from cifake_lib.methods.detectors import load_detector

    try:
        return load_detector(name, device=device)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        msg = str(e)  # library errors usually start with the path already
        raise CifakeError(f"--model {msg}" if msg.startswith(name) else f"--model {name}: {msg}") from None


def run_evaluate(data: DataConfig | CifakeData, cfg: EvaluateConfig, out: str | os.PathLike) -> StageResult:
    """A saved detector scored on the test (or validation) split at its own threshold."""
    from cifake_lib.methods.predict import evaluate_detector

    t0 = time.perf_counter()
    if cfg.split == "val" and isinstance(data, DataConfig) and not 0 < data.val_fraction < 1:
        raise CifakeError(f"--split val needs --val-fraction in (0, 1), got {data.val_fraction}")
    detector = load_detector_or_fail(cfg.model, cfg.device)
    loaded, dcfg = _data(data)
    split = loaded.test if cfg.split == "test" else loaded.val
    if split is None:
        raise CifakeError("--split val: the data has no validation split (--val-fraction 0)")
    out = Path(out)
    m = evaluate_detector(detector, split, out, split_name=cfg.split, model=cfg.model, data=loaded.source,
                          seed=dcfg.seed if dcfg else 0, batch_size=cfg.batch_size, args=_record("evaluate", dcfg, cfg, out))
    return StageResult("evaluate", out, runs=[out], metrics={m["detector"]: m}, seconds=time.perf_counter() - t0)


def run_robustness(data: DataConfig | CifakeData, cfg: RobustnessConfig, out: str | os.PathLike) -> StageResult:
    """Every detector of `cfg.runs` under the perturbation battery, on (a stratified part of) test."""
    from cifake_lib.analysis.robustness import robustness_from_runs
    from cifake_lib.data.load import stratified_subset

    t0 = time.perf_counter()
    cfg.check()
    loaded, dcfg = _data(data)
    seed = dcfg.seed if dcfg else 0
    test = loaded.test
    if cfg.limit is not None and cfg.limit < len(test):
        test = stratified_subset(test, cfg.limit, seed=seed)
    rows = robustness_from_runs(cfg.runs, test, out, perturbations=cfg.perturbations, seed=seed,
                                batch_size=cfg.batch_size, device=cfg.device, data=loaded.source)
    return StageResult("robustness", Path(out), seconds=time.perf_counter() - t0,
                       info={"rows": rows, "n": len(test)})


def study_inputs(runs: list[str]) -> tuple[list[str], list[Path]]:
    """(folders to report on, seed-run folders) of `runs`; a study folder gives its planned detectors
    (the first seed's) and robustness results, as recorded in its study.json."""
    folders: list[str] = []
    seed_runs: list[Path] = []
    for run in runs:
        study = read_study(run)
        layout = (study or {}).get("layout")
        if not layout:
            folders.append(run)
            continue
        root = Path(run)
        folders += [str(root / d) for d in layout["report_runs"]]
        seed_runs += [root / d for d in layout["trained_runs"] if (root / d / "metrics.json").is_file()]
    return folders, seed_runs


def run_report(data: str | DataConfig | None, cfg: ReportConfig, out: str | os.PathLike) -> StageResult:
    """report.md from run folders or a study folder; with a study, OUT/seeds.csv first.

    data: the CIFAKE source whose test images the galleries show (None: no galleries).
    """
    from cifake_lib.analysis.report import build_report
    from cifake_lib.analysis.seeds import SEEDS_CSV, write_seed_table

    t0 = time.perf_counter()
    cfg.check()
    source = data.data if isinstance(data, DataConfig) else data
    folders, seed_runs = study_inputs(cfg.runs)
    if seed_runs:
        write_seed_table(seed_runs, Path(out) / SEEDS_CSV)
    path = build_report(folders, out, data=source, n_boot=cfg.n_boot, gallery_k=cfg.gallery,
                        saliency=cfg.saliency, device=cfg.device, embeddings=cfg.embeddings > 0,
                        embedding_limit=cfg.embeddings)
    return StageResult("report", Path(out), seconds=time.perf_counter() - t0, info={"report": str(path)})


@dataclass(frozen=True)
class Stage:
    """A stage: its settings classes (the first is its own), its function, whether it trains."""

    name: str
    classes: tuple[type, ...]  # settings of the command besides the data's
    run: Callable[..., StageResult]
    reads_data: bool = True  # takes the DataConfig options
    trains: bool = False  # repeated per training seed by `cifake run --seeds`

    @property
    def option_classes(self) -> tuple[type, ...]:
        """Every settings class of the stage's command: the data's (when it reads data), then its own."""
        return ((DataConfig,) if self.reads_data else ()) + self.classes


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("data", (), run_data),
    Stage("zeroshot", (ZeroshotConfig,), run_zeroshot),
    Stage("probe", (ProbeConfig,), run_probe, trains=True),
    Stage("finetune", (FinetuneConfig,), run_finetune, trains=True),
    Stage("cnn", (CnnStageConfig,), run_cnn, trains=True),
    Stage("evaluate", (EvaluateConfig,), run_evaluate),
    Stage("robustness", (RobustnessConfig,), run_robustness),
    Stage("report", (ReportConfig, ReportData), run_report, reads_data=False),
)}


def stage_config(stage: str, values: Mapping[str, Any], data: DataConfig | None, *, where: str = "",
                 flag_names: bool = False) -> Any:
    """The stage's settings from {key: value}, checked; the training seed defaults to the data seed."""
    s = STAGES[stage]
    if not s.classes:
        return None
    defaults = {TRAIN_SEED: data.seed} if data is not None else None
    return build(s.classes[0], values, where=where, defaults=defaults, flag_names=flag_names)


__all__ = ["STAGES", "Stage", "load_detector_or_fail", "run_cnn", "run_data", "run_evaluate", "run_finetune",
           "run_probe", "run_report", "run_robustness", "run_zeroshot", "stage_config", "study_inputs"]
