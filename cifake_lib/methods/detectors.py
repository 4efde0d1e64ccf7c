"""One way to load any detector: `load_detector(path_or_id)`.

    run folder (or its detector.json) with kind "clip"  -> zeroshot.ClipDetector.from_run
                                         kind "probe" -> probe.ProbeDetector.from_run
                                         kind "cnn"   -> baseline.load_cnn_detector
    CLIP model folder (config.json, no detector.json) -> zero-shot ClipDetector, "plain" prompts, 0.5
    Hub id ("openai/clip-vit-base-patch32")            -> the same, from the Hub

Every detector has `kind`, `detector`, `threshold` and `predict_proba(images, batch_size)` ->
p_fake for uint8 images (N, H, W, 3).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from cifake_lib.evaluation.runs import read_detector_meta

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


def load_detector(path_or_id: str | os.PathLike, device: str | torch.device | None = None) -> Detector:
    """Load a detector from a run folder, its detector.json, a CLIP model folder or a Hub id."""
    name = os.fspath(path_or_id)
    path = Path(name).expanduser()
    meta_path = path if path.is_file() and path.suffix == ".json" else path / DETECTOR_FILE
    if meta_path.is_file():
        _, meta = read_detector_meta(meta_path)  # every field checked, the file named in errors
        kind = meta["kind"]
        if kind == "clip":
            from cifake_lib.methods.zeroshot import ClipDetector

            return ClipDetector.from_run(meta_path, device=device)
        if kind == "probe":
            from cifake_lib.methods.probe import ProbeDetector

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
    if _HUB_ID.fullmatch(name) and not name.startswith((".", "/", "~")):
        from cifake_lib.methods.zeroshot import ClipDetector

        return ClipDetector.from_pretrained(name, "plain", threshold=0.5, device=device)
    raise FileNotFoundError(f"{name}: no such run folder or model folder, and not a Hub id "
                            "(like 'openai/clip-vit-base-patch32')")


__all__ = ["Detector", "load_detector", "KINDS"]
