"""The linear probe as a method of the study (`cifake probe`): frozen CLIP image features of each
split (cached), a probe fitted on train with C (or the MLP's alpha) chosen on validation, the run
folder written. The probe itself (model, fitting, detector) is `methods.probe_fit`; the
layer-wise probe (`--layers`) is `methods.layer_probe`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cifake_lib.clip.features import image_features
from cifake_lib.core.files import read_json
from cifake_lib.core.results import RunResult, settings_record
from cifake_lib.data.config import DataConfig, loaded
from cifake_lib.methods.config import ProbeConfig
from cifake_lib.methods.probe_fit import (
    DEFAULT_CS,
    WEIGHTS_FILE,
    ProbeDetector,
    ProbeFit,
    ProbeModel,
    fit_probe,
)

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData


# ---------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------


def run(data: DataConfig | CifakeData, cfg: ProbeConfig, out: str | os.PathLike) -> RunResult:
    """Features for train/val/test (cached), the probe fitted with C (or alpha) chosen on val, the
    run folder written. `.info` holds "C" (or "alpha"), "selection" and "feature_seconds"."""
    from cifake_lib.methods.zeroshot import load_for_inference, model_reference

    t0 = time.perf_counter()
    out = Path(out)
    cifake, dcfg = loaded(data, progress=cfg.progress)
    if cfg.layers:  # the layer-wise probe: one probe per vision block (methods/layer_probe.py)
        from cifake_lib.methods.layer_probe import run_layer_probe

        m = run_layer_probe(cifake, cfg, out, args=settings_record("probe", dcfg, cfg, out=out), n_boot=cfg.n_boot)
        return RunResult("probe", out, runs=[out], metrics={m["detector"]: m}, seconds=time.perf_counter() - t0,
                         info={"layer": m["layer"], "C": m["C"], "selection": m["selection"]})
    from cifake_lib.methods.cost import CostMeter, count_parameters, with_flops

    clip, processor = load_for_inference(cfg.model, cfg.device, image_size=cfg.image_size)
    model_ref = model_reference(clip) or cfg.model
    val = cifake.val if cifake.val is not None and len(cifake.val) else None
    splits = {"train": cifake.train, "test": cifake.test} | ({"val": val} if val is not None else {})
    meter = CostMeter(next(clip.parameters()).device)
    feats, train_seconds = {}, 0.0
    for k, s in splits.items():
        t_split = time.perf_counter()
        feats[k] = image_features(clip, processor, s.images, batch_size=cfg.batch_size, cache=cfg.cache,
                                  progress=cfg.progress, desc=f"CLIP features ({k})")
        train_seconds += time.perf_counter() - t_split if k == "train" else 0.0
    feature_seconds = time.perf_counter() - t0
    t_fit = time.perf_counter()
    fit = fit_probe(feats["train"], cifake.train.labels, feats.get("val"), val.labels if val is not None else None,
                    mlp=cfg.mlp, hidden=(cfg.hidden,), seed=cfg.train_seed, progress=cfg.progress)
    # training cost: the train split's features and the fits (C chosen on val), not val/test scoring
    n_probe = sum(w.size + b.size for w, b in zip(fit.probe.weights, fit.probe.biases, strict=True))
    cost = with_flops(meter.record(trainable_params=n_probe, total_params=count_parameters(clip.parameters()) + n_probe,
                                   train_images=len(cifake.train),
                                   train_seconds=train_seconds + time.perf_counter() - t_fit), clip, cfg.image_size,
                      processor)
    det = ProbeDetector(clip, processor, fit.probe, model_ref=model_ref, image_size=cfg.image_size)
    key = "alpha" if cfg.mlp else "C"
    selection = {"parameter": key, "grid": fit.grid, "val_log_loss": fit.val_log_loss, "best": fit.best,
                 "split": fit.selection_split, "metric": "log loss", "at_edge": fit.at_edge}
    metrics = _write_probe_run(cifake, out, det, feats, selection, cfg=cfg,
                               args=settings_record("probe", dcfg, cfg, out=out), seconds=time.perf_counter() - t0,
                               cost=cost)
    return RunResult("probe", out, runs=[out], metrics={metrics["detector"]: metrics},
                     seconds=time.perf_counter() - t0,
                     info={key: fit.best, "selection": selection, "feature_seconds": feature_seconds})


def _write_probe_run(cifake: CifakeData, out: Path, det: ProbeDetector, feats: Mapping[str, np.ndarray],
                     selection: Mapping[str, Any], *, cfg: ProbeConfig, args: Mapping[str, Any],
                     seconds: float, cost: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The probe's weights, its run folder and (unless cfg.figures is off) its figures; its test metrics."""
    from cifake_lib.evaluation.runs import write_run
    from cifake_lib.viz.run_figures import save_run_figures

    val = cifake.val if "val" in feats else None
    p_test = det.p_fake_from_features(feats["test"])
    p_val = det.p_fake_from_features(feats["val"]) if val is not None else None
    out.mkdir(parents=True, exist_ok=True)
    det.probe.save(out / WEIGHTS_FILE)
    meta = {**det.to_json(), "selection": dict(selection), "n_train": len(cifake.train)}
    metrics = write_run(out, test=cifake.test, p_test=p_test, val=val, p_val=p_val, detector=meta,
                        model=det.model_ref, data=cifake.source, seed=cfg.train_seed, args=args, seconds=seconds,
                        n_boot=cfg.n_boot, cost=cost)
    if cfg.figures:
        save_run_figures(out, test=cifake.test, p_test=p_test, metrics=metrics, val=val, p_val=p_val,
                         name="MLP probe" if cfg.mlp else "linear probe")
    return metrics


def read_probe(out_dir: str | os.PathLike) -> RunResult:
    """A finished probe folder read back as `run` returned it (its test metrics, the chosen C or
    alpha and the selection record in `.info`, less "feature_seconds"); nothing is refitted."""
    out = Path(out_dir)
    det = read_json(out / "detector.json")
    selection = det.get("selection") or {}
    key = selection.get("parameter", "C")
    metrics = read_json(out / "metrics.json")
    seconds = float(read_json(out / "run.json").get("seconds") or 0.0) if (out / "run.json").is_file() else 0.0
    return RunResult("probe", out, runs=[out], metrics={metrics["detector"]: metrics}, seconds=seconds,
                     info={key: det.get(key, selection.get("best")), "selection": selection})


__all__ = ["DEFAULT_CS", "ProbeDetector", "ProbeFit", "ProbeModel", "fit_probe", "read_probe", "run"]
