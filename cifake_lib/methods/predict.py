"""Scoring with any saved detector: `evaluate` (a CIFAKE split -> metrics.json) and `predict` (files).

`predict(detector, images)` is the notebook form: paths, folders, arrays or PIL images -> p_fake.

Both load the detector with `detectors.load_detector` (a study folder, a zero-shot folder, a
fine-tuned CLIP run folder, a zero-shot or probe run, a CNN run, or a plain CLIP folder / Hub
id) and use its saved threshold and prompts.

`predict_paths` takes files and folders (a folder stands for its image files, sorted by name)
and yields one record per image in input order: {"path", "p_fake", "threshold", "label"} with
label "FAKE" or "REAL" at the detector's `threshold` (chosen on validation), or {"path", "error"} for a file that cannot be read. One bad
file never stops the others. Images above PIL's decompression-bomb limit get an error without
being decoded; very large ones below it are first reduced by an integer factor (box filter) so
that their shorter side stays >= `REDUCE_TO` pixels, which keeps memory bounded and changes
p_fake very little (every detector then shrinks them much further, with antialiasing).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cifake_lib import LABEL_NAMES

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
REDUCE_ABOVE = 2048  # shorter side (pixels) above which an image is pre-reduced
REDUCE_TO = 1024  # ... to a shorter side of at least this


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; each folder replaced by its image files (by extension), sorted by name."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted((f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS),
                          key=lambda f: f.name)
        else:
            out.append(p)
    return out


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An (H, W, 3) uint8 image, decoded by `cifake_lib.data.decode` (the data loader's decoder).

    Decompression bombs are refused; images whose shorter side exceeds `REDUCE_ABOVE` are reduced
    (see the module docstring). Raises ValueError (or FileNotFoundError) naming the file.
    """
    from cifake_lib.data.decode import decode_image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    return decode_image(path, reduce_above=REDUCE_ABOVE, reduce_to=REDUCE_TO)


def _accepts_classes(detector: Any) -> bool:
    try:
        return "classes" in inspect.signature(detector.predict_proba).parameters
    except (TypeError, ValueError):
        return False


def score(detector: Any, images: np.ndarray, batch_size: int = 256, classes: np.ndarray | None = None) -> np.ndarray:
    """p_fake (N,) float64; the CIFAR classes go to detectors that use them (class-aware prompts)."""
    if classes is not None and _accepts_classes(detector):
        p = detector.predict_proba(images, batch_size, classes=classes)
    else:
        p = detector.predict_proba(images, batch_size)
    return np.asarray(p, dtype=np.float64).ravel()


def label_of(p_fake: float, threshold: float) -> str:
    return LABEL_NAMES[int(p_fake >= threshold)]


def predict_paths(detector: Any, paths: Sequence[str | os.PathLike], *, batch_size: int = 64,
                  chunk: int = 256) -> Iterator[dict[str, Any]]:
    """One record per image, in input order (see the module docstring); folders are expanded."""
    files = expand_inputs(paths)
    threshold = float(detector.threshold)
    for start in range(0, len(files), chunk):
        part = files[start:start + chunk]
        records: list[dict[str, Any]] = [{"path": str(f)} for f in part]
        by_shape: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
        for i, f in enumerate(part):
            try:
                im = read_image(f)
            except (OSError, ValueError) as e:
                records[i]["error"] = str(e)
                continue
            by_shape.setdefault(im.shape, []).append((i, im))
        for group in by_shape.values():
            try:
                p = score(detector, np.stack([im for _, im in group]), batch_size)
            except (RuntimeError, ValueError, MemoryError) as e:  # one bad group never stops the rest
                for i, _ in group:
                    records[i]["error"] = f"{records[i]['path']}: scoring failed ({type(e).__name__}: {e})"
                continue
            for (i, _), pi in zip(group, p, strict=True):
                # The threshold travels with each answer: p_fake 0.28 is FAKE at 0.208, REAL at 0.5.
                records[i].update(p_fake=float(pi), threshold=threshold, label=label_of(float(pi), threshold))
        yield from records


def _as_array(image: Any, i: int) -> np.ndarray:
    """One (H, W, 3) uint8 image from an array or a PIL image; ValueError naming its position."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image, any mode
        return np.asarray(image.convert("RGB"))
    im = np.asarray(image)
    if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3:
        raise ValueError(f"images[{i}]: expected a uint8 (H, W, 3) array or a PIL image, "
                         f"got {im.dtype} {im.shape}")
    return im


def _as_images(images: Any) -> np.ndarray | list[np.ndarray]:
    """A uint8 batch (N, H, W, 3), or a list of (H, W, 3) images (paths read, folders expanded)."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.dtype != np.uint8 or images.shape[-1] != 3:
            raise ValueError(f"images: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        return images
    if isinstance(images, np.ndarray) or hasattr(images, "convert"):
        return [_as_array(images, 0)]  # one image
    items = [images] if isinstance(images, str | os.PathLike) else list(images)
    if items and all(isinstance(x, str | os.PathLike) for x in items):
        files = expand_inputs(items)
        if not files:
            raise ValueError(f"{', '.join(map(str, items))}: no image files")
        return [read_image(f) for f in files]
    return [_as_array(x, i) for i, x in enumerate(items)]


def predict(detector: Any, images: Any, *, batch_size: int = 64, device: str | None = None) -> np.ndarray:
    """p_fake (N,) float64 for `images`, in order: `cifake predict` for a notebook.

    detector: a loaded detector, or anything `detectors.load_detector` takes (a run or study
    folder, a CLIP model folder, a Hub id), loaded on `device`. images: a file or folder path (a
    folder stands for its image files, sorted by name), a list of paths, a uint8 array
    (N, H, W, 3) or (H, W, 3), or a list of such arrays or PIL images. An image is FAKE when
    p_fake >= `detector.threshold` (chosen on validation). A file that cannot be read raises
    ValueError (FileNotFoundError) naming it; `predict_paths` answers each file instead.
    """
    if not hasattr(detector, "predict_proba"):
        from cifake_lib.methods.detectors import load_detector

        detector = load_detector(detector, device=device)
    batch = _as_images(images)
    if isinstance(batch, np.ndarray):
        return score(detector, batch, batch_size)
    if not batch:
        raise ValueError("images: nothing to score")
    p = np.empty(len(batch), dtype=np.float64)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(batch):
        by_shape.setdefault(im.shape, []).append(i)
    for idx in by_shape.values():  # one forward pass per image size: a batch needs one shape
        p[idx] = score(detector, np.stack([batch[i] for i in idx]), batch_size)
    return p


def evaluate_detector(detector: Any, split: Any, out_dir: str | os.PathLike, *, split_name: str, model: str,
                      data: str, seed: int, batch_size: int = 256, n_boot: int = 1000,
                      args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score `split` at the detector's own threshold; write metrics.json and predictions.csv.

    Returns the metrics dict (metrics.json: `metrics.metrics_record`, split = `split_name`).
    """
    from cifake_lib.core.files import write_json
    from cifake_lib.evaluation.metrics import metrics_record, write_predictions

    out = Path(out_dir)
    p = score(detector, split.images, batch_size, classes=np.asarray(split.classes))
    metrics = metrics_record(split.labels, p, threshold=float(detector.threshold), classes=split.classes,
                             detector=str(detector.detector), model=str(model), data=str(data),
                             split=split_name, seed=int(seed), n_boot=n_boot, threshold_source="detector",
                             **({"args": args} if args else {}))
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # written last: its presence marks a complete folder
    write_predictions(out / "predictions.csv", split.ids, split.labels, split.classes, p)
    write_json(out / "metrics.json", metrics)
    return metrics


__all__ = ["IMAGE_EXTENSIONS", "expand_inputs", "read_image", "score", "predict", "predict_paths",
           "evaluate_detector", "label_of"]
