"""`cifake run`: the whole study in one command, each stage called directly (`app.stages`).

A TOML config (a preset, overridden table by table by `--config`) gives each stage's settings:
table `[zeroshot]` maps onto `ZeroshotConfig`, `[finetune]` onto `FinetuneConfig`, and so on,
with the `[data]` table's keys (overridable per stage table) for the data every stage loads.
The whole config is checked before the first stage runs. Each stage writes into its own
folder under OUT; a stage whose outputs are complete is skipped, a fine-tuning stage with
checkpoints but no final metrics is resumed, so re-running after a crash or a Colab disconnect
continues where it stopped. pipeline.json records each step and the `cifake ...` command line
that runs it alone; OUT/study.json records the settings and where the runs are.

Training seeds (`--seeds 0,1,2`, `[run] seeds`): the trained stages (probe, fine-tunes and
their ablations, CNN) run once per seed on the same data split (the data seed stays fixed);
zero-shot runs once. The run of the data seed keeps the plain folder name (`finetune`), the
others get a suffix (`finetune_seed1`). Robustness and the report's tables use the first
seed's runs; OUT/report/seeds.csv gives every seed's metrics, mean and sd.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cifake_lib.analysis.config import ReportData
from cifake_lib.app import stages
from cifake_lib.app.notebook import RUNS_ENV, STUDY_ENV
from cifake_lib.core.config import (
    SettingError,
    build,
    negated,
    option_map,
    setting,
    to_argv,
    to_mapping,
)
from cifake_lib.core.errors import CifakeError
from cifake_lib.core.files import read_json, write_json
from cifake_lib.core.settings import DEFAULT_MODEL, default_data_source
from cifake_lib.data.config import DataConfig
from cifake_lib.evaluation.study import OLD_STUDY, STUDY, is_study_record, read_study

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS = ("report", "smoke")
STAGES = ("data", "zeroshot", "probe", "finetune", "cnn", "evaluate", "robustness", "report")
NOTEBOOKS = ("01_data", "02_zero_shot", "03_fine_tune", "04_analysis")
NOTEBOOKS_DONE = "notebooks.json"
TINY_MODEL = "tiny"
TINY_FOLDER = "tiny_model"  # under OUT: the tiny CLIP of `--model tiny`
BEST_ZEROSHOT = "@best"  # placeholder for the zero-shot prompt set chosen on validation
# Keys the study itself sets: a config may not.
RESERVED = {"evaluate": {"model"}, "robustness": {"runs"}, "report": {"runs"}}

GET_CIFAKE = (
    "Get CIFAKE from Kaggle (birdy654/cifake-real-and-ai-generated-synthetic-images) or the "
    "authors' GitHub repository (jordan-bird/CIFAKE-Real-and-AI-Generated-Synthetic-Images), "
    "unpack it, and pass the folder (or the .zip/.tar.gz) with --data, or set CIFAKE_DATA."
)


class PipelineError(CifakeError):
    """A configuration or stage failure, with a message for the user."""


# ---------------------------------------------------------------------------
# Settings of the study itself
# ---------------------------------------------------------------------------


@dataclass
class StudyOptions:
    """`cifake run`'s own options: which config, where, what to do."""

    preset: str = setting("report", "report: the study as reported (ViT-B/32, full CIFAKE); smoke: every stage "
                          "on a tiny offline CLIP and a few thousand local images, in minutes on a CPU",
                          choices=PRESETS)
    data: str | None = setting(None, "CIFAKE source for every stage", metavar="SRC",
                               show_default="[data] data in the config, else $CIFAKE_DATA, else hf")
    config: str | None = setting(None, "TOML whose tables override the preset's (see "
                                 "cifake_lib/app/presets/report.toml)", metavar="FILE.toml")
    out: str = setting("study", "folder for every stage's outputs", metavar="DIR")
    print_config: bool = setting(False, "check the merged config and print it as JSON, then exit")


@dataclass
class RunConfig:
    """The `[run]` table: which stages, which CLIP, which training seeds (also options of `cifake run`)."""

    stages: list[str] = setting(default_factory=lambda: list(STAGES), help="stages in order, comma-separated",
                                choices=STAGES, metavar="NAMES", show_default=",".join(STAGES))
    model: str = setting(DEFAULT_MODEL, "CLIP Hub id or local folder for zeroshot, probe and finetune; tiny: "
                         "a tiny randomly initialised CLIP written into OUT", metavar="M")
    seeds: list[int] | None = setting(None, "training seeds: probe, fine-tunes and CNN are trained once per "
                                      "seed on the same data split (zero-shot once); e.g. 0,1,2",
                                      metavar="S,S", show_default="the data seed")
    notebooks: bool = setting(False, "also execute the four notebooks headless (a stage after the report, "
                              "reading the study's runs) and save executed copies in OUT/notebooks")

    def check(self) -> None:
        if not self.stages:
            raise ValueError(f"stages is empty: nothing would run; name at least one of {', '.join(STAGES)}")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")


# What each ablation changes in the main run's settings. WiSE-FT belongs to the main run only:
# an ablation is compared with the main run as trained, and prompt tuning has no weights to mix.
# (None, not []: an empty list is a value the command line would have to spell as `--wise-ft ''`.)
ABLATIONS: dict[str, dict[str, Any]] = {
    "image": {"train": "image", "wise_ft": None},
    "text": {"train": "text", "wise_ft": None},
    "ce": {"loss": "ce", "wise_ft": None},
    "prompt": {"train": "prompt", "loss": "ce", "wise_ft": None},
}


@dataclass
class FinetunePlan:
    """Keys of the `[finetune]` table that shape the study rather than one fine-tuning run."""

    ablations: list[str] = setting(default_factory=list, help="variants fine-tuned after the main run, each in "
                                   "its own folder finetune_<name>: image, text (one encoder learns), ce (FLYP's "
                                   "CE ablation), prompt (CoOp prompt tuning)", choices=tuple(ABLATIONS))



def _table_classes(table: str) -> tuple[type, ...]:
    if table == "run":
        return (RunConfig,)
    if table == "data":
        return (DataConfig,)
    extra = (FinetunePlan,) if table == "finetune" else ()
    return stages.STAGES[table].option_classes + extra


def split_table(table: str, values: Mapping[str, Any]) -> dict[type, dict[str, Any]]:
    """{settings class: its keys} of one TOML table; an unknown or study-set key is an error."""
    known = option_map(_table_classes(table))
    by_key = {k: o for k, (_, o) in known.items()}
    out: dict[type, dict[str, Any]] = {cls: {} for cls in _table_classes(table)}
    for key, value in values.items():
        bare = negated(key, value, by_key)[0]
        if bare in RESERVED.get(table, ()):
            raise PipelineError(f"[{table}] {key}: set by the study itself, not by the config")
        if bare not in known:
            hint = difflib.get_close_matches(key, list(known), n=1)
            raise SettingError(f"[{table}] unknown setting {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint
                               else "") + f"; known: {', '.join(known)}")
        out[known[bare][0]][key] = value
    return out


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def load_config(preset: str = "report", config_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """The preset's TOML, with the tables of `config_file` merged over it key by key (not yet checked)."""
    if preset not in PRESETS:
        raise PipelineError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    text = resources.files("cifake_lib.app").joinpath("presets", f"{preset}.toml").read_text(encoding="utf-8")
    config = tomllib.loads(text)
    if config_file:
        path = Path(config_file)
        try:
            user = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PipelineError(f"--config {path}: file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise PipelineError(f"--config {path}: not valid TOML ({e})") from None
        for table, values in user.items():
            if table not in config:
                raise PipelineError(f"--config {path}: unknown table [{table}]; known: {', '.join(config)}")
            if not isinstance(values, dict):
                raise PipelineError(f"--config {path}: [{table}] must be a table")
            config[table].update(values)
    return config


def _merged_config(preset: str, config_file: str | os.PathLike | None,
                   run_overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The preset and --config merged, with the `cifake run` options given over its [run] table."""
    config = load_config(preset, config_file)
    config["run"].update(run_overrides or {})
    return config


def _model_path(config: Mapping[str, Any], out: Path) -> tuple[str, bool]:
    """(the CLIP the study uses, whether it is the tiny one): [run] model, or for "tiny" the tiny
    CLIP the study writes into OUT/tiny_model."""
    model = str(config["run"].get("model", DEFAULT_MODEL))
    # absolute: run folders record it, and notebooks and reports read them from other directories
    return (str((out / TINY_FOLDER).resolve()), True) if model == TINY_MODEL else (model, False)


def study_config(preset: str = "report", config_file: str | os.PathLike | None = None, *,
                 run_overrides: Mapping[str, Any] | None = None, data: str | None = None,
                 out: str | os.PathLike = "study") -> dict[str, Any]:
    """The merged config, checked as `run_study` checks it, with every setting's value filled in."""
    config = _merged_config(preset, config_file, run_overrides)
    source = data or config.get("data", {}).get("data") or default_data_source()
    planner = plan_study(config, Path(out), source, _model_path(config, Path(out))[0])
    full: dict[str, Any] = {"run": to_mapping(planner.run), "data": to_mapping(planner.data)}
    for step in planner.steps:
        if step.cfg is not None and step.stage not in full:
            full[step.stage] = {k: v for k, v in to_mapping(step.cfg).items() if k not in RESERVED.get(step.stage, ())}
    if "finetune" in full:
        full["finetune"]["ablations"] = planner.ft_plan.ablations
    return full


# ---------------------------------------------------------------------------
# Planning: every step's settings built (and so checked) before anything runs
# ---------------------------------------------------------------------------


@dataclass
class Step:
    """One stage call: its settings, where it writes, when it is done, its command line."""

    stage: str
    name: str
    out: Path
    done_file: str  # relative to `out`; its presence means the step finished
    data: Any  # what the stage reads: a DataConfig, or the report's source
    cfg: Any  # the stage's settings
    argv: list[str]  # the equivalent `cifake ...` options
    best_zeroshot: Path | None = None  # evaluate: the zero-shot folder whose best set is the model
    resumable: bool = False
    complete: Callable[[], bool] | None = None  # a finer "done" test than the done file's presence

    def is_done(self) -> bool:
        if self.complete is not None:
            return self.complete()
        return (self.out / self.done_file).is_file()

    def is_partial(self) -> bool:
        ckpt = self.out / "checkpoints"
        return self.resumable and ckpt.is_dir() and any(ckpt.iterdir())


@dataclass
class Planner:
    """Builds the steps of a study from its config tables (see `plan`)."""

    config: Mapping[str, Any]
    out: Path
    source: str
    model: str
    steps: list[Step] = field(default_factory=list)
    detectors: list[tuple[Path, int]] = field(default_factory=list)  # (run folder, training seed)
    layout: dict[str, Any] = field(default_factory=dict)  # study.json "layout", paths relative to OUT
    ft_plan: FinetunePlan | None = None  # the [finetune] study keys (ablations), when fine-tuning is planned

    def __post_init__(self) -> None:
        self.run = build(RunConfig, self.config.get("run", {}), where="[run]")
        self.data_values = {**self.config.get("data", {}), "data": self.source}
        self.data = build(DataConfig, self.data_values, where="[data]")
        self.seeds = self.run.seeds or [self.data.seed]

    def tables(self, stage: str, extra: Mapping[str, Any] | None = None) -> tuple[dict, dict, dict]:
        parts = split_table(stage, self.config.get(stage, {}))
        classes = stages.STAGES[stage].classes
        own = {**(parts[classes[0]] if classes else {}), **(extra or {})}
        return {**self.data_values, **parts.get(DataConfig, {})}, own, parts

    def add(self, stage: str, name: str, done: str, extra: Mapping[str, Any] | None = None, *,
            folder: str | None = None, **kw: Any) -> Step:
        data_values, own, parts = self.tables(stage, extra)
        out = self.out / (folder or name)
        where = f"[{stage}]" + (f" ({name})" if name != stage else "")  # e.g. "[finetune] (finetune_text)"
        data = build(DataConfig, data_values, where=where) if stages.STAGES[stage].reads_data else None
        cfg = stages.stage_config(stage, own, data, where=where)
        classes = stages.STAGES[stage].classes
        argv = [stage, *(to_argv(DataConfig, data_values) if data else []),
                *(to_argv(classes[0], own) if classes else [])]
        if stage == "report":
            source = build(ReportData, parts[ReportData], where=where).data or self.source
            data, argv = source, [*argv, "--data", source]
        step = Step(stage, name, out, done, data, cfg, [*argv, *(["--out", str(out)] if classes else [])], **kw)
        self.steps.append(step)
        return step

    def seed_name(self, base: str, seed: int) -> str:
        return base if seed == self.data.seed else f"{base}_seed{seed}"

    def seed_extra(self, seed: int, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        # Only an explicit --seeds list writes the training seed out; otherwise it is the data seed.
        return {**(extra or {}), **({stages.TRAIN_SEED: seed} if self.run.seeds else {})}


def _plan_trained(p: Planner, stages_: list[str], model: dict[str, str]) -> None:
    if "finetune" in stages_:
        p.ft_plan = build(FinetunePlan, split_table("finetune", p.config.get("finetune", {}))[FinetunePlan])
    for seed in p.seeds:
        if "probe" in stages_:
            step = p.add("probe", p.seed_name("probe", seed), "metrics.json", p.seed_extra(seed, model))
            p.detectors.append((step.out, seed))
        if "finetune" in stages_:
            runs = [("finetune", {})] + [(f"finetune_{name}", ABLATIONS[name]) for name in p.ft_plan.ablations]
            for base, extra in runs:
                step = p.add("finetune", p.seed_name(base, seed), "metrics.json",
                             p.seed_extra(seed, {**model, **extra}), resumable=True)
                p.detectors.append((step.out, seed))
        if "cnn" in stages_:
            step = p.add("cnn", p.seed_name("cnn", seed), "metrics.json", p.seed_extra(seed))
            p.detectors.append((step.out, seed))


def plan_study(config: Mapping[str, Any], out: Path, data: str, model: str) -> Planner:
    """The study's steps in order (`.steps`), every one's settings checked, and where its runs go
    (`.layout`); raises SettingError or PipelineError. Evaluate, robustness and the report see the
    detectors planned before them."""
    for table in config:
        if table not in ("run", "data") and table not in stages.STAGES:
            raise PipelineError(f"unknown table [{table}]; known: run, data, {', '.join(stages.STAGES)}")
    p = Planner(config, out, data, model)
    todo = p.run.stages
    with_model = {"model": model}
    if "data" in todo:
        p.add("data", "data", stages.SUMMARY)
    zeroshot = p.add("zeroshot", "zeroshot", "summary.csv", with_model).out if "zeroshot" in todo else None
    _plan_trained(p, todo, with_model)
    primary = ([zeroshot] if zeroshot else []) + [d for d, s in p.detectors if s == p.seeds[0]]
    report_runs = list(primary)
    if "evaluate" in todo:
        for det in ([zeroshot] if zeroshot else []) + [d for d, _ in p.detectors]:
            step = p.add("evaluate", f"evaluate:{det.name}", "metrics.json", {"split": "test", "model": str(det)},
                         folder=f"evaluate/{det.name}", best_zeroshot=det if det == zeroshot else None)
            if det in primary:  # the report's leak-free headline
                report_runs.append(step.out)
    if "robustness" in todo:
        runs = [str(d / BEST_ZEROSHOT) if d == zeroshot else str(d) for d in primary]
        report_runs.append(p.add("robustness", "robustness", "robustness.csv", {"runs": runs}).out)
    if "report" in todo:
        p.add("report", "report", "report.md", {"runs": [str(out)]})

    def rel(paths: list[Path]) -> list[str]:
        return [os.path.relpath(x, out) for x in paths]

    # Each method's run of the first training seed: what the report's headline and the notebooks show.
    main_runs = {base: p.seed_name(base, p.seeds[0]) for base in ("probe", "finetune", "cnn") if base in todo}
    p.layout = {"report_runs": rel(report_runs), "trained_runs": rel([d for d, _ in p.detectors]),
                "evaluated": rel([s.out for s in p.steps if s.stage == "evaluate"]),
                "main_runs": ({"zeroshot": rel([zeroshot])[0]} if zeroshot else {}) | main_runs,
                "seeds": p.seeds}
    return p


def plan(config: Mapping[str, Any], out: Path, data: str, model: str) -> list[Step]:
    """The steps of the study in order (see `plan_study`)."""
    return plan_study(config, out, data, model).steps


def best_zeroshot(folder: Path) -> Path:
    """The zero-shot prompt set with the highest validation ROC-AUC (never chosen on test), picked
    as `load_detector` picks a study's run (methods.detectors.best_run_on_val: ties by accuracy)."""
    # Imported here: methods.detectors imports torch, and `cifake --help` must not.
    from cifake_lib.methods.detectors import best_run_on_val

    try:
        return best_run_on_val(folder)[0]
    except FileNotFoundError:
        raise PipelineError(f"{folder}: no zero-shot prompt set with validation metrics") from None


def resolve_data(data: str | None, preset: str) -> str:
    """The data source; the smoke preset insists on local data so it never waits on a network."""
    source = data or default_data_source()
    if preset == "smoke" and not Path(source).expanduser().exists():
        if source.split(":")[0] in {"hf", "kaggle", "github"}:
            raise PipelineError(f"the smoke preset runs offline and needs local CIFAKE data, got {source!r}. {GET_CIFAKE}")
        raise PipelineError(f"--data {source}: no such file or folder. {GET_CIFAKE}")
    return source


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def _resolved(step: Step) -> Step:
    """The step as it runs: zero-shot's best set resolved, robustness runs resolved, resume on."""
    cfg, argv = step.cfg, list(step.argv)
    if step.best_zeroshot is not None:
        best = str(best_zeroshot(step.best_zeroshot))
        cfg = dataclasses.replace(cfg, model=best)
        argv[argv.index("--model") + 1] = best
    if step.stage == "robustness":
        runs = [str(best_zeroshot(Path(r).parent)) if r.endswith(BEST_ZEROSHOT) else r for r in cfg.runs]
        cfg = dataclasses.replace(cfg, runs=runs)
        argv = [str(best_zeroshot(Path(a).parent)) if a.endswith(BEST_ZEROSHOT) else a for a in argv]
    if step.is_partial():
        cfg, argv = dataclasses.replace(cfg, resume=True), [*argv, "--resume"]
    return dataclasses.replace(step, cfg=cfg, argv=argv)


def run_step(step: Step) -> str:
    """Call the stage; "ran", or "stopped" for a deliberate pause (fine-tuning's stop_after)."""
    if step.stage == "notebooks":
        return step.cfg()
    result = stages.STAGES[step.stage].run(step.data, step.cfg, step.out)
    return "stopped" if result.status == "stopped" or not step.is_done() else "ran"


def _stage_failure(step: Step, e: BaseException) -> PipelineError:
    return PipelineError(f"stage {step.name} failed: {e}\nfix the cause and run the same command again: "
                         "finished stages are skipped, and fine-tuning and the CNN resume from their checkpoints")


def _run_steps(steps: list[Step], record: dict[str, Any], out: Path, log: Callable[[str], None]) -> None:
    from cifake_lib.methods.checkpoints import TrainingDiverged
    from cifake_lib.methods.finetune import OutOfMemory

    for i, step in enumerate(steps, 1):
        label = f"[{i}/{len(steps)}] {step.name}"
        if step.is_done():
            log(f"{label}: complete, skipped")
            record["steps"].append({"name": step.name, "status": "skipped", "seconds": 0.0,
                                    "command": _command(step.argv)})
            continue
        step = _resolved(step)
        if "--resume" in step.argv:
            log(f"{label}: resuming from its checkpoints")
        log(f"{label}: {_command(step.argv)}")
        start = time.perf_counter()
        try:
            status = run_step(step)
        except (CifakeError, ValueError, FileNotFoundError, NotADirectoryError, TrainingDiverged, OutOfMemory) as e:
            record["steps"].append({"name": step.name, "status": "failed", "seconds": time.perf_counter() - start,
                                    "command": _command(step.argv)})
            write_json(out / "pipeline.json", record)
            raise _stage_failure(step, e) from e
        seconds = time.perf_counter() - start
        record["steps"].append({"name": step.name, "status": status, "seconds": round(seconds, 2),
                                "command": _command(step.argv)})
        if status == "stopped":
            log(f"{label}: stopped before finishing; run the same command again to continue")
            record["stopped_at"] = step.name
            break
        log(f"{label}: done in {seconds:.1f} s")
        write_json(out / "pipeline.json", record)


def _command(argv: list[str] | None) -> str | None:
    return None if argv is None else "cifake " + " ".join(argv)


def _write_study(out: Path, record: Mapping[str, Any]) -> None:
    """OUT/study.json; an older study's OUT/config.json (which made the folder look like a model) goes."""
    write_json(out / STUDY, record)
    old = out / OLD_STUDY
    if old.is_file():  # study.json was just written, so the folder is a study
        try:
            saved = read_json(old)
        except (OSError, ValueError):
            return
        if is_study_record(saved):
            old.unlink()


def run_study(*, preset: str = "report", data: str | None = None, config_file: str | os.PathLike | None = None,
              out: str | os.PathLike = "study", notebooks: bool = False,
              run_overrides: Mapping[str, Any] | None = None, log=None) -> dict[str, Any]:
    """Run (or continue) the study; returns {"out", "steps": [{name, status, seconds, command}], ...}."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    config = _merged_config(preset, config_file, run_overrides)
    if notebooks:
        config["run"]["notebooks"] = True
    source = resolve_data(data or config.get("data", {}).get("data"), preset)
    if Path(source).expanduser().exists():  # a local path, recorded absolute: the notebooks run elsewhere
        source = str(Path(source).expanduser().resolve())
    out = Path(out)
    model, tiny = _model_path(config, out)
    try:
        planner = plan_study(config, out, source, model)
    except SettingError as e:
        raise PipelineError(f"{e}" + (f" (in --config {config_file} or the {preset} preset)" if config_file
                                      else f" (in the {preset} preset)")) from None
    steps = planner.steps
    if planner.run.notebooks:
        steps.append(_notebooks_step(out, source, preset))
    out.mkdir(parents=True, exist_ok=True)
    if tiny:
        _tiny_model(Path(model), seed=planner.data.seed)
    _write_study(out, {"preset": preset, "config_file": str(config_file) if config_file else None, "data": source,
                       "model": model, "config": config, "layout": planner.layout})
    record: dict[str, Any] = {"out": str(out), "preset": preset, "data": source, "steps": []}
    try:
        _run_steps(steps, record, out, log)
    finally:
        write_json(out / "pipeline.json", record)
    return record


def _tiny_model(folder: Path, seed: int) -> Path:
    from cifake_lib.clip.models import write_tiny_clip

    if not (folder / "config.json").is_file():
        write_tiny_clip(folder, seed=seed)
    return folder


# ---------------------------------------------------------------------------
# Notebooks: a stage after the report, reading the study's runs
# ---------------------------------------------------------------------------


def _notebooks_step(out: Path, source: str, preset: str) -> Step:
    folder = out / "notebooks"

    def run() -> str:
        results = run_notebooks(folder, data=source, smoke=preset == "smoke", study=out)
        write_json(folder / NOTEBOOKS_DONE, {"notebooks": results})
        return "ran"

    def complete() -> bool:
        # Done, unless a notebook was skipped for want of runs the study has now (a stage added since).
        try:
            done = read_json(folder / NOTEBOOKS_DONE)["notebooks"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return not any(str(n.get("status", "")).startswith("skipped") and not missing_study_runs(out, n["name"])
                       for n in done)

    return Step("notebooks", "notebooks", folder, NOTEBOOKS_DONE, source, run,
                ["run", "--preset", preset, "--data", source, "--out", str(out), "--notebooks"], complete=complete)


def _kernel_manager(workdir: Path):
    """A python3 kernel on local IPC sockets where the OS has them (no 'TCP without encryption' warning)."""
    from jupyter_client.manager import KernelManager

    if os.name != "posix":
        return KernelManager(kernel_name="python3")
    import tempfile

    sockets = Path(tempfile.mkdtemp(prefix="cifake-kernel-"))  # short: socket paths are limited to ~100 bytes
    return KernelManager(kernel_name="python3", transport="ipc", ip=str(sockets / "k"))


def execute_notebook(path: Path, workdir: Path, env: dict[str, str], *, timeout: int = 3600) -> Any:
    """Execute one notebook with nbclient, cwd = `workdir`, the kernel seeing `env`.

    Returns the notebook with its outputs; on failure the exception carries the partial notebook
    in `.notebook`, since its outputs show where it stopped.
    """
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError:
        raise PipelineError("running notebooks needs nbclient and ipykernel: pip install -e '.[dev]'") from None
    nb = nbformat.read(path, as_version=4)
    env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", **env}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    km = _kernel_manager(workdir)
    try:
        # cleanup_kc: shut the kernel down here; nbclient leaves a kernel manager it did not make
        # running, and four idle kernels would linger until this process exits.
        NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(workdir)}}).execute(cleanup_kc=True)
    except Exception as e:
        e.notebook = nb
        raise
    finally:
        if getattr(km, "transport", "tcp") == "ipc":  # its socket folder (see _kernel_manager)
            shutil.rmtree(Path(km.ip).parent, ignore_errors=True)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


# The study run folders each notebook reads under `cifake run --notebooks`, and the file that
# says a run is complete.
NOTEBOOK_INPUTS = {"02_zero_shot": (("zeroshot", "summary.csv"), ("probe", "metrics.json")),
                   "03_fine_tune": (("finetune", "metrics.json"),)}


def missing_study_runs(study: Path, notebook: str) -> list[str]:
    """The runs `notebook` reads that the study at `study` does not have (complete)."""
    main = ((read_study(study) or {}).get("layout") or {}).get("main_runs", {})
    return [name for name, done in NOTEBOOK_INPUTS.get(notebook, ())
            if not (study / main.get(name, name) / done).is_file()]


def run_notebooks(folder: Path, *, data: str, smoke: bool, study: Path | None = None, log=None,
                  timeout: int = 3600) -> list[dict]:
    """Execute the four notebooks headless with the study's settings; save executed copies in `folder`.

    With `study`, the kernels see CIFAKE_STUDY=<study>: the notebooks read the study's own data,
    model and runs and train nothing (app/notebook.py); a notebook whose runs the study lacks is
    skipped. Without, they write their own runs under `folder/runs`.
    """
    import nbformat

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    source_dir = Path(__file__).resolve().parent.parent.parent / "notebooks"
    if not source_dir.is_dir():
        raise PipelineError(f"{source_dir}: the notebooks are not here (run from a checkout of the repository)")
    folder.mkdir(parents=True, exist_ok=True)
    env = {"CIFAKE_DATA": data, "CIFAKE_SMOKE": "1" if smoke else "0"}
    if study is not None:  # the notebooks read the study's runs and write none
        env[STUDY_ENV] = str(Path(study).resolve())
    else:
        env[RUNS_ENV] = str(folder / "runs")
    results = []
    for name in NOTEBOOKS:
        missing = missing_study_runs(Path(study), name) if study is not None else []
        if missing:  # reading the study, the notebook would have nothing to show (and must not train)
            status = f"skipped: the study has no {', '.join(missing)} run"
            results.append({"name": name, "status": status, "seconds": 0.0})
            log(f"notebook {name}: {status}")
            continue
        log(f"notebook {name}: running")
        start = time.perf_counter()
        try:
            nb = execute_notebook(source_dir / f"{name}.ipynb", folder, env, timeout=timeout)
            status = "ran"
        except PipelineError:
            raise
        except Exception as e:
            nb, status = getattr(e, "notebook", None), f"failed: {type(e).__name__}"
        if nb is not None:
            nbformat.write(nb, folder / f"{name}.ipynb")
        results.append({"name": name, "status": status, "seconds": round(time.perf_counter() - start, 1)})
        log(f"notebook {name}: {status}")
        if status != "ran":
            raise PipelineError(f"notebook {name} failed; its executed copy is {folder / (name + '.ipynb')}")
    return results


__all__ = ["FinetunePlan", "PipelineError", "RunConfig", "Step", "StudyOptions", "best_zeroshot",
           "execute_notebook", "load_config", "plan", "plan_study", "run_notebooks", "run_study", "study_config"]
