"""A saved detector scored on an external labelled set (`cifake evaluate --data EXTERNAL`).

The set is read by `cifake_lib.data.external` (folder, archive, parquet, `datasets` folder or
Hub) with its images at their own size; each detector's own preprocessing brings them to its
input, as for `cifake predict`. The threshold is the detector's own, chosen on CIFAKE's
validation split: an external set never picks anything. metrics.json holds the usual record
(split "external") plus `external`: the set's name, native image sizes and modes, the label
names read as REAL and FAKE.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cifake_lib.data.config import DataConfig
    from cifake_lib.data.external import ExternalSet
    from cifake_lib.methods.config import EvaluateConfig

__all__ = ["evaluate_external", "run_external_evaluate", "score_external", "wants_external"]


def wants_external(data: str | os.PathLike | None, cfg: EvaluateConfig) -> bool:
    """Whether `cifake evaluate` reads `data` as an external set (see EvaluateConfig.external)."""
    from cifake_lib.data.external import is_external_source

    if cfg.external or cfg.image_column or cfg.label_column or cfg.fake_labels:
        return True
    return data is not None and is_external_source(data)


def score_external(detector: Any, ext: ExternalSet, batch_size: int = 256) -> np.ndarray:
    """p_fake for every image of the set, in order; images of one size go to the detector together."""
    from cifake_lib.data.external import decode_chunks
    from cifake_lib.methods.predict import score

    p = np.empty(len(ext), np.float64)
    for rows, images in decode_chunks(ext):
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for j, im in enumerate(images):
            by_shape.setdefault(im.shape, []).append(j)
        for group in by_shape.values():
            p[rows[group]] = score(detector, np.stack([images[j] for j in group]), batch_size)
    return p


def external_info(ext: ExternalSet) -> dict[str, Any]:
    """What metrics.json records about the set itself."""
    from cifake_lib.data.external import set_name

    sizes = dict(sorted(ext.native_sizes.items(), key=lambda kv: -kv[1]))
    return {"name": set_name(ext.source), "source": ext.source, "split": ext.split,
            "native_size": next(iter(sizes), None), "native_sizes": sizes,
            "native_modes": dict(sorted(ext.native_modes.items())), "label_names": ext.label_names}


def evaluate_external(detector: Any, ext: ExternalSet, out_dir: str | os.PathLike, *, model: str, seed: int = 0,
                      batch_size: int = 256, n_boot: int = 1000, args: Mapping[str, Any] | None = None,
                      ) -> dict[str, Any]:
    """Score `ext` at the detector's own threshold; write metrics.json and predictions.csv."""
    from cifake_lib.core.files import write_json
    from cifake_lib.evaluation.metrics import metrics_record, write_predictions

    out = Path(out_dir)
    p = score_external(detector, ext, batch_size)
    classes = np.full(len(ext), -1, np.int64)
    metrics = metrics_record(ext.labels, p, threshold=float(detector.threshold), classes=classes,
                             detector=str(detector.detector), model=str(model), data=ext.source,
                             split="external", seed=int(seed), n_boot=n_boot, threshold_source="detector",
                             external=external_info(ext), **({"args": dict(args)} if args else {}))
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # written last: its presence marks a complete folder
    write_predictions(out / "predictions.csv", ext.ids, ext.labels, classes, p)
    write_json(out / "metrics.json", metrics)
    return metrics


def run_external_evaluate(data: DataConfig, cfg: EvaluateConfig, out: str | os.PathLike, *, detector: Any = None,
                          args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`cifake evaluate` on an external set: load it (split folder `cfg.split`), score, write."""
    from cifake_lib.data.external import load_external
    from cifake_lib.methods.detectors import load_detector

    if data.skip_bad:  # said, not silently ignored: a test set is scored whole
        logging.getLogger(__name__).warning(
            "--skip-bad does not apply to an external test set: every image is scored or none (an unreadable "
            "file stops the evaluation, naming it)")
    ext = load_external(data.data, split=cfg.split, image_column=cfg.image_column, label_column=cfg.label_column,
                        fake_labels=cfg.fake_labels or None)
    det = detector if detector is not None else load_detector(cfg.model, cfg.device)
    return evaluate_external(det, ext, out, model=cfg.model, seed=data.seed, batch_size=cfg.batch_size, args=args)
