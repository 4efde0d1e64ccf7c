"""One way to load any detector: `load_detector(path_or_id)`.

    study folder (`cifake run --out`)                  -> its run with the best validation AUC
    zero-shot folder (summary.csv, one run per set)    -> the prompt set chosen on validation
    run folder (or its detector.json) with kind "clip"  -> zeroshot.ClipDetector.from_run
                                         kind "probe" -> probe.ProbeDetector.from_run
                                         kind "cnn"   -> baseline.load_cnn_detector
    CLIP model folder (config.json, no detector.json) -> zero-shot ClipDetector, "plain" prompts, 0.5
    Hub id ("openai/clip-vit-base-patch32")            -> the same, from the Hub

The two folder choices are made on validation data only, as `report` makes them, and
`load_detector` says on stderr which run it took.

Every detector has `kind`, `detector`, `threshold` and `predict_proba(images, batch_size)` ->
p_fake for uint8 images (N, H, W, 3).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from cifake_lib.core.files import read_json
from cifake_lib.core.network import looks_like_path
from cifake_lib.evaluation.runs import read_detector_meta
from cifake_lib.evaluation.study import INDEX, STUDY, index_runs, read_study

DETECTOR_FILE = "detector.json"
KINDS = ("clip", "probe", "cnn")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@runtime_checkable
class Detector(Protocol):
    kind: str
    detector: str
    threshold: float

    def predict_proba(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 (N, H, W, 3) -> p_fake (N,)."""
        ...


def is_study(path: Path) -> bool:
    """A `cifake run` output folder: it has a study.json, or its (older) config.json holds a study
    record (`evaluation.study.read_study`), not a CLIP model's config.

    Any study.json counts, even one read_study cannot use: such a folder is still a study, and
    loading a detector from it should say that no run can be chosen on validation.
    """
    return (path / STUDY).is_file() or read_study(path) is not None


def _val_auc(run_dir: Path) -> tuple[float, float] | None:
    m = run_dir / "metrics_val.json"
    if not m.is_file():
        return None
    metrics = read_json(m)
    auc = metrics.get("roc_auc") if isinstance(metrics, dict) else None
    return None if auc is None else (float(auc), float(metrics.get("accuracy") or 0.0))


def _candidates(folder: Path) -> list[Path]:
    """The run folders a choice on validation picks from: a study's complete runs as its index lists
    them (a zero-shot run contributes each prompt set), else `folder` and up to two levels below it."""
    if (folder / INDEX).is_file():
        runs = index_runs(folder)
        return [d for r in runs for d in ([r] if (r / DETECTOR_FILE).is_file() else sorted(r.glob("*")))]
    return [folder, *folder.glob("*"), *folder.glob("*/*")]


def best_run_on_val(folder: Path) -> tuple[Path, float]:
    """The run folder under `folder` (a study: the runs of its index) with the best validation ROC
    AUC (ties: validation accuracy), and that AUC. Test data play no part in the choice."""
    candidates = [d for d in _candidates(folder)
                  if d.is_dir() and (d / DETECTOR_FILE).is_file() and _val_auc(d) is not None]
    if not candidates:
        raise FileNotFoundError(f"{folder}: no run folder with {DETECTOR_FILE} and metrics_val.json inside, so no "
                                "detector can be chosen on validation; pass one run folder with --model")
    best = max(sorted(candidates), key=lambda d: _val_auc(d))
    return best, _val_auc(best)[0]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_detector_path(path: Path, note: Callable[[str], Any] = _say) -> Path:
    """A study folder or a zero-shot folder -> the run chosen on validation (said through `note`);
    anything else unchanged."""
    if not path.is_dir() or (path / DETECTOR_FILE).is_file():
        return path
    study = is_study(path)
    if study or (path / "summary.csv").is_file():
        best, auc = best_run_on_val(path)
        what = "study" if study else "zero-shot folder"
        note(f"{path}: {what}; using {best} (best validation ROC AUC, {auc:.4f})")
        return best
    return path


def load_detector(path_or_id: str | os.PathLike, device: str | torch.device | None = None, *,
                  note: Callable[[str], Any] = _say) -> Detector:
    """Load a detector from a study or zero-shot folder (the run chosen on validation), a run
    folder, its detector.json, a CLIP model folder or a Hub id."""
    name = os.fspath(path_or_id)
    path = resolve_detector_path(Path(name).expanduser(), note)
    meta_path = path if path.is_file() and path.suffix == ".json" else path / DETECTOR_FILE
    if meta_path.is_file():
        _, meta = read_detector_meta(meta_path)  # every field checked, the file named in errors
        kind = meta["kind"]
        if kind == "clip":
            from cifake_lib.methods.zeroshot import ClipDetector

            return ClipDetector.from_run(meta_path, device=device)
        if kind == "probe":
            from cifake_lib.methods.probe_fit import ProbeDetector

            return ProbeDetector.from_run(meta_path, device=device)
        if kind == "cnn":
            from cifake_lib.methods.cnn import load_cnn_detector

            return load_cnn_detector(meta_path, device=device)
        raise ValueError(f"{meta_path}: unknown detector kind {kind!r} (expected one of {', '.join(KINDS)})")
    if path.is_dir():
        if (path / "config.json").is_file():
            from cifake_lib.methods.zeroshot import ClipDetector

            return ClipDetector.from_pretrained(path, "plain", threshold=0.5, device=device)
        raise FileNotFoundError(f"{path}: neither a run folder (no {DETECTOR_FILE}) nor a CLIP model folder "
                                "(no config.json)")
    if path.exists():
        raise ValueError(f"{path}: not a detector: expected a run folder, its {DETECTOR_FILE}, "
                         "a CLIP model folder or a Hub id")
    if looks_like_path(name):  # a mistyped folder: no Hub lookup
        raise FileNotFoundError(f"{name}: no such folder (a run folder, study folder or model folder was meant)")
    if _HUB_ID.fullmatch(name):
        from cifake_lib.methods.zeroshot import ClipDetector

        return ClipDetector.from_pretrained(name, "plain", threshold=0.5, device=device)
    raise FileNotFoundError(f"{name}: no such run folder or model folder, and not a Hub id "
                            "(like 'openai/clip-vit-base-patch32')")


__all__ = ["Detector", "load_detector", "KINDS", "is_study", "best_run_on_val", "resolve_detector_path"]
