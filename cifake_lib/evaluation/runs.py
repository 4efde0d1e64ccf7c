"""The run folder (docs/architecture.md, "The run folder"): what every evaluating stage writes, and
how to find and read it back.

    DIR/metrics.json         test metrics (metrics_record, split "test"); written last
    DIR/predictions.csv      test predictions: id,label,cifar_class,p_fake
    DIR/predictions_val.csv  validation predictions (when there is a validation split)
    DIR/metrics_val.json     validation metrics at the same threshold (idem)
    DIR/run.json             arguments, package versions, the git commit, python, platform, device, seconds
    DIR/detector.json        the detector dict + the chosen "threshold"
    DIR/README.md            a model card: what it is, data, split, metrics, threshold, how to load it

`read_study` (a `cifake run` output folder's own settings, OUT/study.json) is defined in
`study.py` and importable from here; what every method returns is `core.results.RunResult`.

metrics.json is written last, so a folder that holds it is a complete run (find_runs
relies on this). The threshold is chosen on validation predictions only: the test
predictions never influence it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import platform
import sys
import warnings
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import cifake_lib
from cifake_lib.clip.prompts import MARGINALS
from cifake_lib.core.errors import CifakeError
from cifake_lib.core.files import read_json, write_json, write_text_atomic
from cifake_lib.core.paths import find_moved, portable_path, resolve_recorded
from cifake_lib.evaluation.metrics import (
    RECORD_FIELDS,
    choose_threshold,
    metrics_record,
    read_predictions,
    utc_now,
    write_predictions,
)
from cifake_lib.evaluation.model_card import CARD, model_card
from cifake_lib.evaluation.scale import is_tiny_model

METRICS = "metrics.json"
METRICS_VAL = "metrics_val.json"
PREDICTIONS = "predictions.csv"
PREDICTIONS_VAL = "predictions_val.csv"
RUN = "run.json"
DETECTOR = "detector.json"
# detector.json fields that name a folder (the CLIP a detector loads, the model it was trained from)
_PATH_FIELDS = ("model", "base_model", "finetuned_model")
# The study folder lives in `study.py` (no numpy: `cifake --help` imports it).
from cifake_lib.evaluation.study import OLD_STUDY, STUDY, read_study  # noqa: E402,F401

# Distribution names of the packages whose versions a run records (key -> distribution).
_PACKAGES = {
    "torch": "torch",
    "transformers": "transformers",
    "datasets": "datasets",
    "numpy": "numpy",
    "sklearn": "scikit-learn",
    "safetensors": "safetensors",
    "accelerate": "accelerate",
    "matplotlib": "matplotlib",
}


def package_versions() -> dict[str, str | None]:
    """Versions of python, cifake_lib and the packages that shape results (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "cifake_lib": cifake_lib.__version__}
    for key, dist in _PACKAGES.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = None
    return versions


@functools.cache
def source_commit() -> dict[str, Any] | None:
    """The git commit of the cifake_lib source that ran ({"commit", "dirty"}), when the package lives in
    a git checkout (an editable install); None otherwise (a wheel, no git)."""
    import subprocess

    root = Path(cifake_lib.__file__).resolve().parent.parent

    def git(*argv: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *argv], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit or not (root / "cifake_lib").is_dir() or git("rev-parse", "--show-toplevel") is None:
        return None
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "cifake_lib")
    return {"commit": commit, "dirty": bool(changed)}


def device_info() -> dict[str, Any]:
    """What the run ran on: CPU count, CUDA devices (names, CUDA version), MPS."""
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "cuda": False, "cuda_devices": [], "mps": False}
    try:
        import torch
    except ImportError:
        return info
    if torch.cuda.is_available():
        info["cuda"] = True
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_version"] = torch.version.cuda
    mps = getattr(torch.backends, "mps", None)
    info["mps"] = bool(mps is not None and mps.is_available())
    return info


def _jsonable(obj: Any) -> Any:
    """Arguments as JSON: containers recursed, numpy/Path via tolist/fspath, anything else as str."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, argparse.Namespace):  # private entries (e.g. the CLI's _run) are not arguments
        return _jsonable({k: v for k, v in vars(obj).items() if not k.startswith("_")})
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    return str(obj)


def _settings_dict(args: Any) -> dict[str, Any]:
    record = _jsonable(args)
    return record if isinstance(record, dict) else {}


def _check_split(split: Any, p: Any, name: str) -> np.ndarray:
    for attr in ("labels", "classes", "ids"):
        if not hasattr(split, attr):
            raise TypeError(f"write_run: {name} must be a Split (with .labels .classes .ids), lacks .{attr}")
    p = np.asarray(p, dtype=np.float64).ravel()
    if len(p) != len(split.labels):
        raise ValueError(f"write_run: p_{name} has {len(p)} scores but {name} has {len(split.labels)} images")
    return p


def write_run(out_dir: str | os.PathLike, *, test: Any, p_test: Any, val: Any | None, p_val: Any | None,
              detector: dict, model: str, data: str, seed: int, args: dict | Any, seconds: float,
              threshold: float | None = None, n_boot: int = 1000,
              cost: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write a complete run folder for one detector and return its test metrics dict.

    cost: what training cost (`methods.cost`: parameters, peak memory, throughput), recorded as
    "cost" in metrics.json and run.json.

    test, val: `cifake_lib.data.load.Split`s (anything with .labels .classes .ids); p_test,
    p_val: their p_fake scores. threshold None -> chosen on val (choose_threshold), or 0.5
    when there is no val; the source is recorded as metrics["threshold_source"]
    ("val" | "default" | "given"). `detector` needs at least "detector" (e.g. "probe") and
    should carry "kind"; detector.json is it plus "threshold" (the chosen one wins).
    """
    out = Path(out_dir)
    if not isinstance(detector, dict) or not isinstance(detector.get("detector"), str):
        raise ValueError("write_run: detector must be a dict with a 'detector' name, e.g. {'kind': 'probe', "
                         f"'detector': 'probe'}}; got {detector!r}")
    p_test = _check_split(test, p_test, "test")
    if (val is None) != (p_val is None):
        raise ValueError("write_run: give both val and p_val, or neither")
    if val is not None:
        p_val = _check_split(val, p_val, "val")
    if threshold is not None:
        source = "given"
    elif val is not None:
        threshold, source = choose_threshold(val.labels, p_val), "val"
    else:
        threshold, source = 0.5, "default"
    threshold = float(threshold)
    # Folders the run depends on, recorded relative to it: a copied or moved study still loads.
    model = portable_path(str(model), out)
    detector = {**detector, **{k: portable_path(str(detector[k]), out) for k in _PATH_FIELDS
                               if isinstance(detector.get(k), str)}}

    common = dict(threshold=threshold, detector=detector["detector"], model=str(model), data=str(data),
                  seed=int(seed), n_boot=n_boot, threshold_source=source)
    # Compute before writing anything, so bad inputs leave no half-written folder.
    metrics = metrics_record(test.labels, p_test, classes=test.classes, split="test", **common)
    if cost is not None:
        metrics["cost"] = _jsonable(dict(cost))
    metrics_val = (metrics_record(val.labels, p_val, classes=val.classes, split="val", **common)
                   if val is not None else None)

    out.mkdir(parents=True, exist_ok=True)
    # A previous run in the same folder must not leave a stale metrics.json that looks complete.
    (out / METRICS).unlink(missing_ok=True)
    write_predictions(out / PREDICTIONS, test.ids, test.labels, test.classes, p_test)
    if val is not None:
        write_predictions(out / PREDICTIONS_VAL, val.ids, val.labels, val.classes, p_val)
        write_json(out / METRICS_VAL, metrics_val)
    else:
        (out / PREDICTIONS_VAL).unlink(missing_ok=True)
        (out / METRICS_VAL).unlink(missing_ok=True)
    write_json(out / DETECTOR, {**_jsonable(detector), "threshold": threshold})
    tiny = any(is_tiny_model(str(resolve_recorded(str(r), out) or r)) for r in (model, detector.get("base_model"))
               if isinstance(r, str) and r)
    write_text_atomic(out / CARD, model_card(out.name, metrics=metrics, detector=detector, model=str(model),
                                             args=_settings_dict(args),
                                             metrics_val=metrics_val, tiny=tiny))
    write_json(out / RUN, {
        "args": _jsonable(args),
        "seconds": float(seconds),
        "created": utc_now(),
        "detector": detector["detector"],
        "model": str(model),
        "data": str(data),
        "seed": int(seed),
        "versions": package_versions(),
        "git": source_commit(),
        "python": sys.version,
        "platform": platform.platform(),
        "device": device_info(),
    } | ({"cost": metrics["cost"]} if cost is not None else {}))
    write_json(out / METRICS, metrics)  # last: its presence marks a complete run
    return metrics


DETECTOR_KINDS = ("clip", "probe", "cnn")
_TEXT_FIELDS = ("detector", "model", "prompt_set", "probe", "base_model")


def _bad_field(meta_path: Path, field: str, value: Any, expected: str) -> CifakeError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return CifakeError(f"{meta_path}: \"{field}\" is {shown}; expected {expected}. Fix the file or re-run the "
                       "stage that wrote it")


def _check_file_field(meta_path: Path, meta: dict[str, Any], field: str) -> None:
    """A file named by detector.json: a plain relative path inside the run folder, present."""
    value = meta[field]
    if not isinstance(value, str) or not value or Path(value).is_absolute() or ".." in Path(value).parts:
        raise _bad_field(meta_path, field, value, "a file name inside the run folder")
    if not (meta_path.parent / value).is_file():
        raise FileNotFoundError(f"{meta_path}: \"{field}\" names {value}, which is not in {meta_path.parent}")


def check_detector_meta(meta: Any, meta_path: Path, kind: str | None = None) -> dict[str, Any]:
    """Check every field detector.json may hold; raise CifakeError naming the file and the field.

    kind one of DETECTOR_KINDS; threshold a finite number in [0, 1]; text fields strings; files
    (weights, text_embeddings) inside the run folder; use_known_class a boolean; prompts a set
    name or {"REAL": [...], "FAKE": [...]}; architecture an object. Other keys are kept as notes.
    `kind`, when given, must match (checked first: a run of another kind is the likelier mistake).
    """
    if not isinstance(meta, dict):
        raise CifakeError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("kind") not in DETECTOR_KINDS:
        raise CifakeError(f"{meta_path}: unknown detector kind {meta.get('kind')!r}; expected one of "
                          f"{', '.join(DETECTOR_KINDS)}. Fix the file or re-run the stage that wrote it")
    if kind is not None and meta["kind"] != kind:
        raise CifakeError(f"{meta_path}: kind is {meta['kind']!r}, not {kind!r}")
    if "threshold" in meta:
        t = meta["threshold"]
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or not 0 <= t <= 1:
            raise _bad_field(meta_path, "threshold", t, "a finite number in [0, 1]")
    for field in _TEXT_FIELDS:
        if field in meta and not isinstance(meta[field], str):
            raise _bad_field(meta_path, field, meta[field], "a string")
    if meta["kind"] in ("clip", "probe") and not (isinstance(meta.get("model"), str) and meta["model"]):
        raise _bad_field(meta_path, "model", meta.get("model"), "the CLIP model: a folder or a Hub id")
    if meta["kind"] == "cnn" and "weights" not in meta:
        raise _bad_field(meta_path, "weights", None, "the weights file (cnn.safetensors)")
    for field in ("weights", "text_embeddings", "clip_adapter"):
        if field in meta:
            _check_file_field(meta_path, meta, field)
    if "use_known_class" in meta and not isinstance(meta["use_known_class"], bool):
        raise _bad_field(meta_path, "use_known_class", meta["use_known_class"], "true or false")
    if "marginal" in meta and meta["marginal"] not in MARGINALS:
        raise _bad_field(meta_path, "marginal", meta["marginal"], f"one of {', '.join(MARGINALS)}")
    prompts = meta.get("prompts")
    if "prompts" in meta and not (isinstance(prompts, str) or (
            isinstance(prompts, dict) and {"REAL", "FAKE"} <= set(prompts))):
        raise _bad_field(meta_path, "prompts", prompts, 'a prompt set name or {"REAL": [...], "FAKE": [...]}')
    if "architecture" in meta and not isinstance(meta["architecture"], dict):
        raise _bad_field(meta_path, "architecture", meta["architecture"], "an object")
    return meta


def read_detector_meta(path: str | os.PathLike, kind: str | None = None) -> tuple[Path, dict[str, Any]]:
    """(run folder, checked detector.json) of a run folder or its detector.json (of `kind`, if given)."""
    path = Path(path)
    meta_path = path if path.suffix == ".json" else path / DETECTOR
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: detector.json not found (not a run folder?)")
    return meta_path.parent, check_detector_meta(read_json(meta_path), meta_path, kind)


def read_detector_json(run_dir: str | os.PathLike, kind: str) -> tuple[Path, dict[str, Any]]:
    """(run folder, checked detector.json) of a run folder (or its detector.json) of this `kind`.

    Every detector's `from_run` starts here, so a wrong folder or a bad field gets the same
    clear error.
    """
    return read_detector_meta(run_dir, kind)


def check_metrics(record: Any, source: str = METRICS) -> dict[str, Any]:
    """Raise ValueError naming `source` unless `record` has every metrics.json field (docs/architecture.md,
    "The run folder")."""
    if not isinstance(record, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(record).__name__}")
    missing = [f for f in RECORD_FIELDS if f not in record]
    if missing:
        raise ValueError(f"{source}: not a metrics.json record, missing field(s) {missing}")
    return record


def read_run(path: str | os.PathLike, *, predictions: bool = True) -> dict[str, Any]:
    """Read a run folder (or its metrics.json) back.

    Returns {"path", "metrics", "metrics_val", "run", "detector", "predictions",
    "predictions_val"}; optional files that are absent are None, as are the predictions
    when `predictions` is False. A missing or malformed metrics.json raises, naming the file.
    """
    path = Path(path)
    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such run folder")
    if not (folder / METRICS).is_file():
        raise FileNotFoundError(f"{folder}: not a run folder (no {METRICS})")

    def optional_json(name: str) -> Any:
        return read_json(folder / name) if (folder / name).is_file() else None

    def optional_csv(name: str) -> dict[str, np.ndarray] | None:
        return read_predictions(folder / name) if predictions and (folder / name).is_file() else None

    metrics_val = optional_json(METRICS_VAL)
    if metrics_val is not None:
        check_metrics(metrics_val, str(folder / METRICS_VAL))
    return {
        "path": folder,
        "metrics": absolute_paths(check_metrics(read_json(folder / METRICS), str(folder / METRICS)), folder),
        "metrics_val": metrics_val,
        "run": optional_json(RUN),
        "detector": optional_json(DETECTOR),
        "predictions": optional_csv(PREDICTIONS),
        "predictions_val": optional_csv(PREDICTIONS_VAL),
    }


def _is_folder_record(d: Path) -> bool:
    return d.is_dir() and any((d / f).is_file() for f in ("config.json", DETECTOR, METRICS))


def recorded_folder(value: Any, folder: Path) -> Any:
    """A folder a run recorded (relative to itself, or absolute from an older or moved study) as
    an absolute path when it exists, else `value` unchanged (a Hub id, "cifake-cnn")."""
    if not isinstance(value, str) or not value:
        return value
    found = resolve_recorded(value, folder)
    if found is not None:
        return str(found)
    if Path(value).is_absolute() or value.startswith("."):
        moved = find_moved(value, folder, accept=_is_folder_record)
        if moved is not None:
            return str(moved)
    return value


def absolute_paths(metrics: dict[str, Any], folder: Path) -> dict[str, Any]:
    """metrics.json as read: its "model" (and an evaluation's `args.model`, the run it scored)
    resolved against the run folder, so every run read names its folders the same way."""
    out = {**metrics, "model": recorded_folder(metrics.get("model"), folder)}
    if isinstance(metrics.get("args"), dict) and "model" in metrics["args"]:
        out["args"] = {**metrics["args"], "model": recorded_folder(metrics["args"]["model"], folder)}
    return out


def find_runs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Run folders under `paths` (searched recursively) whose metrics.json is a test record.

    A path may also name a metrics.json directly. Unreadable or non-test metrics.json
    files are skipped (with a warning for unreadable ones). Sorted, without duplicates.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: set[Path] = set()
    for root in map(Path, paths):
        if root.is_file():
            candidates = [root]
        elif root.is_dir():
            candidates = sorted(root.rglob(METRICS))
        else:
            raise FileNotFoundError(f"{root}: no such file or folder")
        for file in candidates:
            try:
                record = read_json(file)
            except (OSError, ValueError) as e:
                warnings.warn(f"skipping {file}: {e}", stacklevel=2)
                continue
            if isinstance(record, dict) and record.get("split") == "test":
                found.add(file.parent.resolve())
    return sorted(found)


def detector_kind(detector: Any) -> str:
    """The kind of a detector: the prefix of metrics.json's "detector" ("finetune:both" -> "finetune")."""
    return str(detector).split(":")[0]


# The study's detectors, by the prefix of metrics.json's "detector", and the notebook that makes each.
STUDY_DETECTORS = {"zeroshot": ("zero-shot CLIP", "02"), "probe": ("linear probe", "02"),
                   "finetune": ("fine-tuned CLIP", "03"), "cnn": ("CIFAKE paper's CNN", "cifake cnn / smoke mode")}


def runs_found_note(runs: Iterable[Mapping[str, Any]]) -> str:
    """Which of the study's detectors have a run among `runs` (read_run dicts) and which have none.

    "found: zero-shot CLIP, linear probe | not found: fine-tuned CLIP (run notebook 03), ..."
    """
    kinds = {detector_kind(r["metrics"].get("detector", "")) for r in runs}
    found = [name for key, (name, _) in STUDY_DETECTORS.items() if key in kinds]
    missing = [f"{name} (run {'notebook ' if src[0].isdigit() else ''}{src})"
               for key, (name, src) in STUDY_DETECTORS.items() if key not in kinds]
    return f"found: {', '.join(found) or 'none'} | not found: {', '.join(missing) or 'none'}"
