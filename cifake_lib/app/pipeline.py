"""`cifake run`: the whole study in one command, each stage called directly (`app.stages`).

A TOML config (a preset, overridden table by table by `--config`) gives each stage's settings:
table `[zeroshot]` maps onto `ZeroshotConfig`, `[finetune]` onto `FinetuneConfig`, and so on,
with the `[data]` table's keys (overridable per stage table) for the data every stage loads.
The whole config is checked before the first stage runs. Each stage writes into its own
folder under OUT; a stage whose outputs are complete is skipped, a fine-tuning stage with
checkpoints but no final metrics is resumed, so re-running after a crash or a Colab disconnect
continues where it stopped. pipeline.json records each step and the `cifake ...` command line
that runs it alone; OUT/study.json records the settings and where the runs are.

A study is a grid of runs (docs/architecture.md, "The study grid and its index"): `[run]`
declares its axes, `methods` (each a `[methods.<name>]` table: a stage and the settings it
changes), `models` (backbones), `train_sizes` and `seeds`. Each run has a key (method, model,
train_size, seed) and a folder under OUT/runs named from the key by one rule
(`evaluation.study.RunKey.folder`), so adding a value to an axis runs only the new runs.
OUT/runs.csv, the index, is rewritten as runs finish; `--print-plan` lists it without running.
Robustness and the report's headline use the main cell (first model, largest training set,
first seed); the report adds a table and a figure along every axis with several values.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
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
from cifake_lib.app.index import plan_text, write_index
from cifake_lib.app.notebook import RUNS_ENV, STUDY_ENV
from cifake_lib.core.config import (
    SettingError,
    build,
    negated,
    option_map,
    options,
    setting,
    to_argv,
    to_mapping,
)
from cifake_lib.core.errors import CifakeError
from cifake_lib.core.files import read_json, write_json
from cifake_lib.core.paths import portable_path
from cifake_lib.core.settings import DEFAULT_MODEL, default_data_source
from cifake_lib.data.config import DataConfig
from cifake_lib.evaluation.scale import settings_scale
from cifake_lib.evaluation.study import (
    ALL,
    OLD_STUDY,
    OWN,
    RUNS_DIR,
    STUDY,
    RunKey,
    is_study_record,
    read_study,
)

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
# `model` values naming a tiny random backbone the study writes into OUT: name -> (family, folder)
TINY_MODELS = {TINY_MODEL: ("clip", TINY_FOLDER), "tiny-siglip": ("siglip", "tiny_siglip"),
               "tiny-dinov2": ("dinov2", "tiny_dinov2")}
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
    print_config: bool = setting(False, "check the merged config and print it as TOML (every setting; "
                                 "--config reads it back), then exit")
    print_plan: bool = setting(False, "list every run of the grid with its key, its status and the single "
                               "`cifake ...` command that reproduces it, then exit (imports no torch)")


def _sizes(value: Any, word: str) -> list[int | str]:
    """train_sizes / image_sizes from "320,all" or a TOML list: integers, and `word` for the axis's
    default by name (ALL: the whole split, OWN: the backbone's own size; the folders without _n / _r)."""
    items = [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else list(value)
    out: list[int | str] = []
    for v in items:
        if isinstance(v, str) and v.lower() == word:
            out.append(word)
        elif isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and v.isdigit():
            out.append(int(v))
        else:
            raise ValueError(f"each element must be an integer or {word!r}, got {v!r}")
    return out


def _numbers(values: list[Any] | None) -> list[int]:
    return [v for v in values or [] if isinstance(v, int)]


def _named_default(values: list[Any], word: str) -> list[Any]:
    """The axis's values with `word` ("all", "own") as None, the key's default."""
    return [None if v == word else v for v in values]


@dataclass
class RunConfig:
    """The `[run]` table: the stages, and the study grid's axes (also options of `cifake run`).

    The grid is methods x models x train_sizes x seeds: every method (a named override of its
    stage's settings, declared in a `[methods.<name>]` table) runs once per backbone, training-set
    size and training seed it applies to; zero-shot trains nothing (once per backbone), the CNN
    has no backbone (once per size and seed).
    """

    stages: list[str] = setting(default_factory=lambda: list(STAGES), help="stages in order, comma-separated",
                                choices=STAGES, metavar="NAMES", show_default=",".join(STAGES))
    model: str = setting(DEFAULT_MODEL, "the default backbone: a Hub id or local folder (CLIP, SigLIP, DINOv2); "
                         "tiny, tiny-siglip, tiny-dinov2: a tiny randomly initialised model of that family written "
                         "into OUT", metavar="M")
    models: list[str] | None = setting(None, "backbones of the grid (the models axis), comma-separated",
                                       metavar="M,M", show_default="[run] model")
    methods: list[str] | None = setting(None, "methods of the grid, each a [methods.<name>] table, "
                                        "comma-separated", metavar="NAMES",
                                        show_default="every declared method whose stage runs")
    train_sizes: list[int] | None = setting(None, "training-set sizes of the grid: nested stratified subsets "
                                            "of the training split, one validation split for all; e.g. "
                                            "320,1000,all ('all': the whole split, the runs a study without "
                                            "this axis made)", metavar="N,N", show_default="the whole split",
                                            convert=lambda v: _sizes(v, ALL))
    seeds: list[int] | None = setting(None, "training seeds: every trained method runs once per seed on the "
                                      "same data split (zero-shot once); e.g. 0,1,2", metavar="S,S",
                                      show_default="one seed, the data --seed; the report preset: 0,1,2")
    image_sizes: list[int] | None = setting(None, "input sides of the grid in pixels (the resolution axis): every "
                                            "method with a backbone runs once per size, position embeddings "
                                            "interpolated; e.g. own,112,64 ('own': each backbone's own size, "
                                            "the runs a study without this axis made)", metavar="PX,PX",
                                            show_default="each backbone's own", convert=lambda v: _sizes(v, OWN))
    external: list[str] | None = setting(None, "external labelled test sets (REAL/ + FAKE/ folders, archives, "
                                         "parquet, hf:REPO), comma-separated: every main-cell detector is scored "
                                         "on each (`cifake evaluate --external`) into OUT/external/<set>/<run>/, "
                                         "and the report gains the cross-dataset table", metavar="SRC,SRC")
    notebooks: bool = setting(False, "also execute the four notebooks headless (a stage after the report, "
                              "reading the study's runs) and save executed copies in OUT/notebooks")

    def check(self) -> None:
        if not self.stages:
            raise ValueError(f"stages is empty: nothing would run; name at least one of {', '.join(STAGES)}")
        for name in ("seeds", "train_sizes", "models", "methods", "image_sizes", "external"):
            values = getattr(self, name)
            if values is not None and (not values or len(set(values)) != len(values)):
                raise ValueError(f"{name} must be distinct and at least one, got {values}")
        from cifake_lib.core.network import check_local_folder

        for model in [self.model, *(self.models or [])]:
            if model not in TINY_MODELS:  # a mistyped folder stops the study before its first stage
                try:
                    check_local_folder(model, "model")
                except FileNotFoundError as e:
                    raise ValueError(str(e)) from None
        if any(n < 2 for n in _numbers(self.train_sizes)):
            raise ValueError(f"train_sizes: each size must be at least 2 (one REAL, one FAKE), got {self.train_sizes}")
        if any(n < 8 for n in _numbers(self.image_sizes)):
            raise ValueError(f"image_sizes: each side must be at least 8 pixels, got {self.image_sizes}")


METHOD_NAME = re.compile(r"[a-z][a-z0-9-]*")
# The stages whose runs are cells of the grid: zero-shot per backbone, the others also per size and seed.
METHOD_STAGES = ("zeroshot", "probe", "finetune", "cnn")
NO_BACKBONE = ("cnn",)  # methods of these stages have no `model` axis


@dataclass(frozen=True)
class Method:
    """One value of the methods axis: a name, its stage, and what it changes in the stage's settings."""

    name: str
    stage: str
    overrides: Mapping[str, Any]


def read_methods(config: Mapping[str, Any]) -> dict[str, Method]:
    """The `[methods.<name>]` tables, each checked: a known stage and keys of that stage's settings."""
    methods = {}
    for name, table in (config.get("methods") or {}).items():
        where = f"[methods.{name}]"
        if not METHOD_NAME.fullmatch(name):
            raise PipelineError(f"{where}: a method name is lower case letters, digits and '-', starting with a letter")
        if not isinstance(table, Mapping) or table.get("stage") not in METHOD_STAGES:
            raise PipelineError(f"{where}: needs stage = one of {', '.join(METHOD_STAGES)}")
        overrides = {k: (None if v == [] else v) for k, v in table.items() if k != "stage"}
        try:
            split_table(table["stage"], overrides)
        except SettingError as e:
            raise SettingError(f"{where}: {e}") from None
        methods[name] = Method(name, table["stage"], overrides)
    return methods


def split_table(table: str, values: Mapping[str, Any], *, user: bool = True) -> dict[type, dict[str, Any]]:
    """{settings class: its keys} of one TOML table; an unknown key is an error, and so is a key the
    study sets itself when the table is the user's (`user`)."""
    classes = (RunConfig,) if table == "run" else (DataConfig,) if table == "data" else stages.STAGES[table].option_classes
    known = option_map(classes)
    by_key = {k: o for k, (_, o) in known.items()}
    out: dict[type, dict[str, Any]] = {cls: {} for cls in classes}
    for key, value in values.items():
        bare = negated(key, value, by_key)[0]
        if user and bare in RESERVED.get(table, ()):
            raise PipelineError(f"[{table}] {key}: set by the study itself, not by the config")
        if table == "finetune" and key == "ablations":
            raise PipelineError("[finetune] ablations: the ablations are methods of the grid now; list them in "
                                "[run] methods (e.g. methods = [\"flyp\", \"image\", \"text\", \"ce\", \"prompt\"])")
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
    """The preset's TOML, with the tables of `config_file` merged over it key by key (not yet checked);
    `[methods.<name>]` tables merge method by method."""
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
            if table == "methods":
                for name, method in values.items():
                    config[table][name] = {**config[table].get(name, {}), **method} if isinstance(method, dict) else method
            else:
                config[table].update(values)
    return config


def _merged_config(preset: str, config_file: str | os.PathLike | None,
                   run_overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The preset and --config merged, with the `cifake run` options given over its [run] table."""
    config = load_config(preset, config_file)
    config["run"].update(run_overrides or {})
    return config


def model_path(model: str, out: Path) -> str:
    """The backbone a run loads: `model` itself, or for "tiny", "tiny-siglip", "tiny-dinov2" the tiny
    random model of that family the study writes into OUT."""
    # absolute: run folders record it, and notebooks and reports read them from other directories
    return str((out / TINY_MODELS[model][1]).resolve()) if model in TINY_MODELS else model


def _as_table(cfg: Any, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """A settings instance as its TOML table: every setting; a None where the default is not None
    (a list setting set to none) written as [], TOML's spelling of it (see read_methods)."""
    defaults = {o.key: o.default for o in options(type(cfg))}
    return {k: [] if v is None and defaults.get(k) is not None else v
            for k, v in to_mapping(cfg).items() if k not in skip}


def study_config(preset: str = "report", config_file: str | os.PathLike | None = None, *,
                 run_overrides: Mapping[str, Any] | None = None, data: str | None = None,
                 out: str | os.PathLike = "study") -> dict[str, Any]:
    """The merged config, checked as `run_study` checks it, with every setting's value filled in: each
    stage's table as written (not a method's overrides of it), each method's overrides, so that
    `cifake run --config` reads back the same config."""
    config = _merged_config(preset, config_file, run_overrides)
    source = data or config.get("data", {}).get("data") or default_data_source()
    planner = plan_study(config, Path(out), source)  # checks everything, every run's settings included
    full: dict[str, Any] = {"run": _as_table(planner.run), "data": _as_table(planner.data)}
    for stage in dict.fromkeys(step.stage for step in planner.steps if step.cfg is not None):
        parts = split_table(stage, config.get(stage, {}))
        own = {**parts[stages.STAGES[stage].classes[0]],  # what the study sets itself: left out below
               **{k: ["study"] if k == "runs" else "study" for k in RESERVED.get(stage, ())}}
        cfg = stages.stage_config(stage, own, planner.data, where=f"[{stage}]")
        # a run's backbone comes from [run] model / models (the grid), not from its stage's table
        grid = {"model"} if stage in METHOD_STAGES and stage not in NO_BACKBONE else set()
        data_keys = {k: v for k, v in config.get(stage, {}).items() if k in {o.key for o in options(DataConfig)}}
        full[stage] = {**_as_table(cfg, RESERVED.get(stage, set()) | grid), **data_keys}
    full["methods"] = {m.name: {"stage": m.stage, **{k: [] if v is None else v for k, v in m.overrides.items()}}
                       for m in planner.methods.values()}
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
    key: RunKey | None = None  # a run of the grid: its place in it
    evaluates: Path | None = None  # evaluate: the run folder it re-evaluates
    skip: str | None = None  # why the grid cannot make this run (e.g. no text tower); never executed

    def is_done(self) -> bool:
        if self.complete is not None:
            return self.complete()
        return (self.out / self.done_file).is_file()

    def is_partial(self) -> bool:
        return self.resumable and any(d.is_dir() and any(d.iterdir()) for d in (self.out / "checkpoints",
                                                                                   self.out / "checkpoint"))


@dataclass
class Planner:
    """Builds the steps of a study from its config tables (see `plan_study`)."""

    config: Mapping[str, Any]
    out: Path
    source: str
    steps: list[Step] = field(default_factory=list)
    layout: dict[str, Any] = field(default_factory=dict)  # study.json "layout", paths relative to OUT

    def __post_init__(self) -> None:
        self.run = build(RunConfig, self.config.get("run", {}), where="[run]")
        self.data_values = {**self.config.get("data", {}), "data": self.source}
        self.data = build(DataConfig, self.data_values, where="[data]")
        self.seeds = self.run.seeds or [self.data.seed]
        self.models = self.run.models or [self.run.model]
        self.sizes: list[int | None] = _named_default(self.run.train_sizes or [self.data.train_size], ALL)
        self.image_sizes: list[int | None] = _named_default(self.run.image_sizes or [None], OWN)
        self._check_sizes_fit()
        self.methods = read_methods(self.config)
        self.chosen = self._chosen_methods()
        self.defaults = RunKey("", self.run.model, self.data.train_size, self.data.seed, None)

    def _check_sizes_fit(self) -> None:
        """With a [data] subset the training split's size is known before any image is read: a
        train_size larger than it is refused now, not after the runs before it have trained."""
        if self.data.subset is None:
            return
        from cifake_lib.data.load import validation_size

        n_train = self.data.subset[0]
        if self.data.val_fraction > 0:
            n_train -= validation_size(n_train, self.data.val_fraction)
        too_big = [n for n in self.sizes if n is not None and n > n_train]
        if too_big:
            raise PipelineError(
                f"train_sizes {', '.join(map(str, too_big))}: more than the {n_train} training images that [data] "
                f"subset = {':'.join(map(str, self.data.subset))} leaves after the validation split (val_fraction "
                f"{self.data.val_fraction}); raise the subset's train part or drop the size")

    def _chosen_methods(self) -> list[Method]:
        names = self.run.methods if self.run.methods is not None else list(self.methods)
        unknown = [n for n in names if n not in self.methods]
        if unknown:
            raise PipelineError(f"[run] methods: unknown {', '.join(unknown)}; declared: {', '.join(self.methods)} "
                                "(declare a new one as a [methods.<name>] table with its stage)")
        return [self.methods[n] for n in names if self.methods[n].stage in self.run.stages]

    def main_key(self, method: Method) -> RunKey:
        """The method's run in the main cell: first model, largest training set, first seed, first input size."""
        size = None if None in self.sizes else max(s for s in self.sizes if s is not None)
        return self.key(method, self.models[0], size, self.seeds[0], self.image_sizes[0])

    def key(self, method: Method, model: str | None, size: int | None, seed: int | None,
            image_size: int | None = None) -> RunKey:
        if method.stage == "zeroshot":
            return RunKey(method.name, model, None, None, image_size)
        if method.stage in NO_BACKBONE:
            return RunKey(method.name, None, size, seed, None)
        return RunKey(method.name, model, size, seed, image_size)

    def add(self, stage: str, name: str, done: str, extra: Mapping[str, Any] | None = None, *,
            folder: str | None = None, data_extra: Mapping[str, Any] | None = None, **kw: Any) -> Step:
        parts = split_table(stage, self.config.get(stage, {}))
        classes = stages.STAGES[stage].classes
        extra_parts = split_table(stage, extra or {}, user=False)
        own = {**(parts[classes[0]] if classes else {}), **(extra_parts[classes[0]] if classes else {})}
        data_values = {**self.data_values, **parts.get(DataConfig, {}), **extra_parts.get(DataConfig, {}),
                       **(data_extra or {})}
        out = self.out / (folder or name)
        where = f"[{stage}]" + (f" ({name})" if name != stage else "")  # e.g. "[finetune] (text)"
        data = build(DataConfig, data_values, where=where) if stages.STAGES[stage].reads_data else None
        cfg = stages.stage_config(stage, own, data, where=where)
        argv = [stage, *(to_argv(DataConfig, data_values) if data else []),
                *(to_argv(classes[0], own) if classes else [])]
        if stage == "report":
            source = build(ReportData, parts[ReportData], where=where).data or self.source
            data, argv = source, [*argv, "--data", source]
        step = Step(stage, name, out, done, data, cfg, [*argv, *(["--out", str(out)] if classes else [])], **kw)
        self.steps.append(step)
        return step

    def add_run(self, method: Method, key: RunKey) -> Step:
        """The step of one grid run: the stage's table, the method's overrides, the key's axes."""
        extra: dict[str, Any] = dict(method.overrides)
        if key.model is not None:
            extra["model"] = model_path(key.model, self.out)
        if key.seed is not None and self.run.seeds:  # only an explicit seeds list writes the training seed out
            extra[stages.TRAIN_SEED] = key.seed
        if key.image_size is not None:
            extra["image_size"] = key.image_size
        data_extra = {"train_size": key.train_size} if key.train_size is not None else {}
        folder = key.folder(self.defaults)
        done = "summary.csv" if method.stage == "zeroshot" else "metrics.json"
        step = self.add(method.stage, folder, done, extra, folder=f"{RUNS_DIR}/{folder}", data_extra=data_extra,
                        key=key, resumable=method.stage in ("finetune", "cnn"))
        step.skip = skip_reason(method.stage, step.cfg, key.model and self.family(key.model))
        return step

    def family(self, model: str) -> str | None:
        """The backbone family of a model of the grid, known without loading it (None: not known)."""
        from cifake_lib.core.backbones import family_of_reference, family_of_type

        return family_of_type(TINY_MODELS[model][0]) if model in TINY_MODELS else family_of_reference(model)


def skip_reason(stage: str, cfg: Any, family: str | None) -> str | None:
    """Why a run of `stage` with settings `cfg` cannot run on a backbone of `family`, or None."""
    from cifake_lib.methods.finetune_config import family_problem

    if family == "image" and stage == "zeroshot":
        return "no text tower: zero-shot scores text prompts"
    return family_problem(cfg, family) if stage == "finetune" else None


def _plan_runs(p: Planner) -> list[Step]:
    """Every run of the grid, zero-shot first (once per backbone and input size), then per seed,
    size, method, model and input size."""
    runs = [p.add_run(m, p.key(m, model, None, None, px)) for m in p.chosen if m.stage == "zeroshot"
            for model in p.models for px in p.image_sizes]
    for seed in p.seeds:
        for size in p.sizes:
            for m in (m for m in p.chosen if m.stage != "zeroshot"):
                for model in ([None] if m.stage in NO_BACKBONE else p.models):
                    for px in ([None] if m.stage in NO_BACKBONE else p.image_sizes):
                        runs.append(p.add_run(m, p.key(m, model, size, seed, px)))
    return runs


def _rel(out: Path, paths: list[Path]) -> list[str]:
    return [os.path.relpath(x, out) for x in paths]


def _layout(p: Planner, runs: list[Step], report_runs: list[Path]) -> dict[str, Any]:
    """study.json's "layout": where the report's runs, each method's main run and the seed runs are,
    and where each run of the earlier (pre-grid) layout went."""
    out = p.out
    main = {m.name: p.main_key(m) for m in p.chosen}
    skipped = {os.path.relpath(s.out, out): s.skip for s in runs if s.skip}
    runs = [s for s in runs if not s.skip]
    by_key = {s.key: s for s in runs}
    main_runs = {name: _rel(out, [by_key[k].out])[0] for name, k in main.items() if k in by_key}
    for m in p.chosen:  # the stage's first method answers for the stage ("finetune": the main fine-tune)
        if m.name in main_runs:
            main_runs.setdefault(m.stage, main_runs[m.name])
    seed_runs = [s.out for s in runs if s.key.seed is not None and s.key.model in (None, main[s.key.method].model)
                 and s.key.train_size == main[s.key.method].train_size
                 and s.key.image_size == main[s.key.method].image_size]
    first_finetune = next((m.name for m in p.chosen if m.stage == "finetune"), None)
    renamed = {}
    for s in runs:  # the folders before the grid: finetune, finetune_<ablation>, <stage>_seed<s>
        k, stage = s.key, p.methods[s.key.method].stage
        if k.model not in (None, p.run.model) or k.train_size != p.defaults.train_size or k.image_size is not None:
            continue
        base = stage if stage != "finetune" or k.method == first_finetune else f"finetune_{k.method}"
        renamed[base if k.seed in (None, p.data.seed) else f"{base}_seed{k.seed}"] = _rel(out, [s.out])[0]
    return {"report_runs": _rel(out, report_runs), "trained_runs": _rel(out, [s.out for s in runs if s.key.seed is not None]),
            "seed_runs": _rel(out, seed_runs), "evaluated": _rel(out, [s.out for s in p.steps if s.stage == "evaluate"]),
            "main_runs": main_runs, "seeds": p.seeds, "renamed": renamed, "skipped": skipped,
            "axes": {"methods": [m.name for m in p.chosen], "models": p.models, "train_sizes": p.sizes,
                     "seeds": p.seeds, "image_sizes": p.image_sizes}}


def _newer_than(done: Path, runs: list[Path]) -> Callable[[], bool]:
    """A "done" test for a step that reads runs: its output exists and no run finished after it (a
    value added to an axis, a run re-made), so that the report and robustness follow the grid."""
    def complete() -> bool:
        if not done.is_file():
            return False
        made = done.stat().st_mtime_ns
        return all(m.stat().st_mtime_ns <= made for r in runs for m in (r / "metrics.json", r / "summary.csv")
                   if m.is_file())

    return complete


EXTERNAL_STEP = "external:"  # step names "external:<set>:<run>"


def _plan_external(p: Planner, primary: list[Step]) -> list[Step]:
    """`[run] external`: every main-cell detector scored on each external set, at its own threshold
    (chosen on CIFAKE's validation split), into OUT/external/<set>/<run>/ (analysis/cross_dataset.py)."""
    from cifake_lib.data.external import set_name

    steps, named = [], {}
    for source in p.run.external or []:
        if not str(source).startswith("hf:") and not Path(source).expanduser().exists():  # found now, not after training
            raise PipelineError(f"[run] external: {source!r} not found (a folder with REAL/ and FAKE/, an archive "
                                "of one, a parquet file, a datasets folder, or hf:REPO)")
        name = set_name(source)
        if named.setdefault(name, source) != source:  # one folder per set name: the second would read the first's
            raise PipelineError(f"[run] external: {named[name]!r} and {source!r} are both named {name!r} (their "
                                "results would share OUT/external/" + name + "/); rename or copy one of them")
        for run in primary:
            zeroshot = run.stage == "zeroshot"
            model = str(run.out / BEST_ZEROSHOT) if zeroshot else str(run.out)
            steps.append(p.add("evaluate", f"{EXTERNAL_STEP}{name}:{run.out.name}", "metrics.json",
                               {"split": "test", "model": model, "external": True},
                               folder=f"external/{name}/{run.out.name}",
                               data_extra={"data": source, "subset": None, "dedup": False},  # the whole set
                               best_zeroshot=run.out if zeroshot else None))
    return steps


def plan_study(config: Mapping[str, Any], out: Path, data: str) -> Planner:
    """The study's steps in order (`.steps`), every one's settings checked, and where its runs go
    (`.layout`); raises SettingError or PipelineError. Evaluate, robustness and the report see the
    runs planned before them."""
    for table in config:
        if table not in ("run", "data", "methods") and table not in stages.STAGES:
            raise PipelineError(f"unknown table [{table}]; known: run, data, methods, {', '.join(stages.STAGES)}")
    p = Planner(config, out, data)
    todo = p.run.stages
    if "data" in todo:
        p.add("data", "data", stages.SUMMARY)
    runs = _plan_runs(p)
    main = {p.main_key(m) for m in p.chosen}
    primary = [s for s in runs if s.key in main and not s.skip]
    report_runs = [s.out for s in primary]
    if "evaluate" in todo:
        for run in (r for r in runs if not r.skip):
            zeroshot = run.stage == "zeroshot"
            step = p.add("evaluate", f"evaluate:{run.out.name}", "metrics.json",
                         {"split": "test", "model": str(run.out / BEST_ZEROSHOT) if zeroshot else str(run.out)},
                         folder=f"evaluate/{run.out.name}", best_zeroshot=run.out if zeroshot else None,
                         evaluates=run.out)
            if run in primary:  # the report's leak-free headline
                report_runs.append(step.out)
        report_runs += [s.out for s in _plan_external(p, primary)]
    if "robustness" in todo:
        names = [str(s.out / BEST_ZEROSHOT) if s.stage == "zeroshot" else str(s.out) for s in primary]
        step = p.add("robustness", "robustness", "robustness.csv", {"runs": names})
        step.complete = _newer_than(step.out / "robustness.csv", [s.out for s in primary])
        report_runs.append(step.out)
    if "report" in todo:
        step = p.add("report", "report", "report.md", {"runs": [str(out)]})
        step.complete = _newer_than(step.out / "report.md", [s.out for s in p.steps if s.key or s.evaluates
                                                             or s.name.startswith(EXTERNAL_STEP)])
    p.layout = _layout(p, runs, report_runs)
    return p


def plan(config: Mapping[str, Any], out: Path, data: str) -> list[Step]:
    """The steps of the study in order (see `plan_study`)."""
    return plan_study(config, out, data).steps


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
    if step.is_partial() and hasattr(cfg, "resume"):  # the CNN continues from its checkpoint by itself
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

    session: dict[str, str] = {}  # step name -> how this invocation's attempt ended
    _say_skipped(steps, log)
    for i, step in enumerate(steps, 1):
        label = f"[{i}/{len(steps)}] {step.name}"
        if step.skip:
            record["steps"].append({"name": step.name, "status": f"skipped: {step.skip}", "seconds": 0.0,
                                    "command": None})
            continue
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
        except Exception as e:  # any failure is recorded (pipeline.json, runs.csv) before it is reported
            record["steps"].append({"name": step.name, "status": "failed", "seconds": time.perf_counter() - start,
                                    "command": _command(step.argv)})
            session[step.name] = "failed"
            write_json(out / "pipeline.json", record)
            write_index(steps, out, session)
            if isinstance(e, (CifakeError, ValueError, FileNotFoundError, NotADirectoryError, TrainingDiverged,
                              OutOfMemory)):
                raise _stage_failure(step, e) from e
            raise  # an OSError (a full disk, a read-only folder) keeps its own one-line message
        seconds = time.perf_counter() - start
        record["steps"].append({"name": step.name, "status": status, "seconds": round(seconds, 2),
                                "command": _command(step.argv)})
        session[step.name] = status
        if step.key is not None or step.stage == "evaluate":  # the index's row of this run changed
            write_index(steps, out, session)
        if status == "stopped":
            log(f"{label}: stopped before finishing; run the same command again to continue")
            record["stopped_at"] = step.name
            break
        log(f"{label}: done in {seconds:.1f} s")
        write_json(out / "pipeline.json", record)


def _say_skipped(steps: list[Step], log: Callable[[str], None]) -> None:
    """Once, before anything runs: the runs of the grid its backbones cannot make, and why."""
    reasons: dict[str, list[str]] = {}
    for s in steps:
        if s.skip:
            reasons.setdefault(s.skip, []).append(f"{s.key.method} on {s.key.model}")
    for why, runs in reasons.items():
        log(f"skipped, {len(runs)} run(s) of the grid ({why}): {', '.join(dict.fromkeys(runs))}")


def _command(argv: list[str] | None) -> str | None:
    from cifake_lib.app.index import command_line

    return None if argv is None else command_line(argv)


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


def _planned(preset: str, data: str | None, config_file: str | os.PathLike | None, out: Path,
             run_overrides: Mapping[str, Any] | None, notebooks: bool) -> tuple[dict[str, Any], str, Planner]:
    """(the merged config, the data source, the checked plan) of a `cifake run` invocation."""
    config = _merged_config(preset, config_file, run_overrides)
    if notebooks:
        config["run"]["notebooks"] = True
    source = resolve_data(data or config.get("data", {}).get("data"), preset)
    if Path(source).expanduser().exists():  # a local path, recorded absolute: the notebooks run elsewhere
        source = str(Path(source).expanduser().resolve())
    try:
        planner = plan_study(config, out, source)
    except SettingError as e:
        where = [*(["the command line's options"] if run_overrides else []),
                 *([f"--config {config_file}"] if config_file else []), f"the {preset} preset"]
        raise PipelineError(f"{e} (in {' or '.join(where)})") from None
    return config, source, planner


def check_study(*, preset: str = "report", data: str | None = None, config_file: str | os.PathLike | None = None,
                out: str | os.PathLike = "study", run_overrides: Mapping[str, Any] | None = None) -> None:
    """Check what `run_study` would check (settings, data source, model folders) without writing or
    importing anything heavy: `cifake run` calls it before it creates OUT."""
    _planned(preset, data, config_file, Path(out), run_overrides, False)


def print_plan(*, preset: str = "report", data: str | None = None, config_file: str | os.PathLike | None = None,
               out: str | os.PathLike = "study", run_overrides: Mapping[str, Any] | None = None) -> str:
    """Every run of the study's grid (key, status, run folder, the single-run command) and the other
    steps, as tab-separated text; nothing runs and no torch is imported."""
    *_, planner = _planned(preset, data, config_file, Path(out), run_overrides, False)
    return plan_text(planner.steps, Path(out))


def run_study(*, preset: str = "report", data: str | None = None, config_file: str | os.PathLike | None = None,
              out: str | os.PathLike = "study", notebooks: bool = False,
              run_overrides: Mapping[str, Any] | None = None, log=None) -> dict[str, Any]:
    """Run (or continue) the study; returns {"out", "steps": [{name, status, seconds, command}], ...}.

    OUT/runs.csv (the grid's index) is written before the first step and after every run."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out)
    config, source, planner = _planned(preset, data, config_file, out, run_overrides, notebooks)
    steps = planner.steps
    if planner.run.notebooks:
        steps.append(_notebooks_step(out, source, preset))
    out.mkdir(parents=True, exist_ok=True)
    from cifake_lib.core.lock import study_lock

    with study_lock(out, "run_study"):  # one study at a time per folder (nested in the CLI's own: counted)
        for model in planner.models:
            if model in TINY_MODELS:
                _tiny_model(Path(model_path(model, out)), TINY_MODELS[model][0], seed=planner.data.seed)
        _write_study(out, {"preset": preset, "config_file": str(config_file) if config_file else None,
                           "data": source, "model": portable_path(model_path(planner.models[0], out), out),
                           "config": config, "layout": planner.layout,
                           "scale": settings_scale([model_path(m, out) for m in planner.models],
                                                   planner.data.subset).record()})
        write_index(steps, out)
        record: dict[str, Any] = {"out": str(out), "preset": preset, "data": source, "steps": []}
        try:
            _run_steps(steps, record, out, log)
        finally:
            write_json(out / "pipeline.json", record)
    return record


def _tiny_model(folder: Path, family: str, seed: int) -> Path:
    from cifake_lib.clip.tiny import write_tiny_model

    if not (folder / "config.json").is_file():
        write_tiny_model(folder, family, seed=seed)
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
    """The runs `notebook` reads that the study at `study` does not have (complete): each stage's main
    run as study.json's layout names it (from the grid's index)."""
    main = ((read_study(study) or {}).get("layout") or {}).get("main_runs", {})
    return [name for name, done in NOTEBOOK_INPUTS.get(notebook, ())
            if not (study / main.get(name, f"{RUNS_DIR}/{name}") / done).is_file()]


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


__all__ = ["Method", "PipelineError", "RunConfig", "Step", "StudyOptions", "best_zeroshot", "check_study", "execute_notebook",
           "load_config", "model_path", "plan", "plan_study", "print_plan", "read_methods", "run_notebooks",
           "run_study", "study_config"]
