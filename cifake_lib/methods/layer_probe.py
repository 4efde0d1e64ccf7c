"""The layer-wise linear probe: which vision block carries the REAL/FAKE signal (`cifake probe --layers`).

Features: for each vision block, its class token through the tower's final layer norm and the
visual projection (`clip.layers`), all blocks from one forward pass, cached; block L is exactly
the ordinary probe's feature. One logistic-regression probe per block, each with its own C chosen
on the validation split by log loss (`probe.fit_probe`, the ordinary probe's fitting). Written:

- OUT/layers.csv: per block, C, validation and test ROC AUC with 95% bootstrap CIs, test accuracy
  at the block's validation threshold, and which block validation chose (highest validation AUC;
  ties: the earlier block). Test AUC is reported for every block but chooses nothing;
- OUT/layers.png: validation and test ROC AUC by block, with their CIs;
- the run folder of the chosen block's probe (detector kind "probe" with "layer": that block,
  which `ProbeDetector` reads back), with its cost (`methods.cost`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData
    from cifake_lib.methods.config import ProbeConfig

LAYERS_CSV = "layers.csv"
LAYERS_FIGURE = "layers.png"
CSV_COLUMNS = ("layer", "C", "at_edge", "val_roc_auc", "val_roc_auc_ci_low", "val_roc_auc_ci_high", "test_roc_auc",
               "test_roc_auc_ci_low", "test_roc_auc_ci_high", "test_accuracy", "threshold", "chosen")


def _auc(labels: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> tuple[float | None, list[float] | None]:
    from sklearn.metrics import roc_auc_score

    from cifake_lib.evaluation.metrics import bootstrap_ci

    if len(np.unique(labels)) < 2:
        return None, None
    return float(roc_auc_score(labels, p)), bootstrap_ci(labels, p, n_boot=n_boot, seed=seed)["roc_auc"]


def layer_rows(feats: dict[str, np.ndarray], data: CifakeData, layers: list[int], *, n_boot: int = 1000,
               seed: int = 0) -> tuple[list[dict[str, Any]], dict[int, Any]]:
    """One probe per block (C chosen on validation); (rows of layers.csv, {block: ProbeFit})."""
    from cifake_lib.evaluation.metrics import choose_threshold
    from cifake_lib.methods.probe_fit import fit_probe

    val = data.val
    if val is None or not len(val):
        raise ValueError("the layer-wise probe chooses C and the block on validation: the data has no "
                         "validation split (set --val-fraction)")
    rows, fits = [], {}
    for layer in layers:
        i = layer - 1
        fit = fit_probe(feats["train"][i], data.train.labels, feats["val"][i], val.labels, seed=seed, progress=False)
        p_val = fit.probe.predict_proba(feats["val"][i])
        p_test = fit.probe.predict_proba(feats["test"][i])
        val_auc, val_ci = _auc(np.asarray(val.labels), p_val, n_boot, seed)
        test_auc, test_ci = _auc(np.asarray(data.test.labels), p_test, n_boot, seed)
        threshold = choose_threshold(val.labels, p_val)
        accuracy = float(((p_test >= threshold).astype(np.int64) == np.asarray(data.test.labels)).mean())
        rows.append({"layer": layer, "C": fit.best, "at_edge": fit.at_edge, "val_roc_auc": val_auc,
                     "val_roc_auc_ci95": val_ci, "test_roc_auc": test_auc, "test_roc_auc_ci95": test_ci,
                     "test_accuracy": accuracy, "threshold": threshold, "chosen": False})
        fits[layer] = fit
    best = max(rows, key=lambda r: (-np.inf if r["val_roc_auc"] is None else r["val_roc_auc"], -r["layer"]))
    best["chosen"] = True
    return rows, fits


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from cifake_lib.core.files import write_csv

    flat = []
    for r in rows:
        f = {k: v for k, v in r.items() if not k.endswith("_ci95")}
        for key in ("val_roc_auc", "test_roc_auc"):
            ci = r[f"{key}_ci95"] or [None, None]
            f[f"{key}_ci_low"], f[f"{key}_ci_high"] = ci
        flat.append(f)
    write_csv(path, flat, CSV_COLUMNS)


def run_layer_probe(data: CifakeData, cfg: ProbeConfig, out: str | Path, *, args: dict | None = None,
                    n_boot: int = 1000) -> dict[str, Any]:
    """Features of every block (one pass, cached), a probe per block, layers.csv and the figure; the
    chosen block's run folder. Returns its test metrics with "layer" and "layers" (the rows) added."""
    from cifake_lib.clip.backbone import n_blocks
    from cifake_lib.clip.layers import layer_features, parse_layers
    from cifake_lib.evaluation.runs import write_run
    from cifake_lib.methods.cost import CostMeter, count_parameters, with_flops
    from cifake_lib.methods.probe_fit import WEIGHTS_FILE, ProbeDetector
    from cifake_lib.methods.zeroshot import load_for_inference, model_reference
    from cifake_lib.viz.cost_figures import layers_figure
    from cifake_lib.viz.plots import save_figure

    if cfg.mlp:
        raise ValueError("--layers fits a linear probe per block; it does not combine with --mlp")
    t0 = time.perf_counter()
    out = Path(out)
    clip, processor = load_for_inference(cfg.model, cfg.device, image_size=cfg.image_size)
    layers = parse_layers(cfg.layers, n_blocks(clip))
    meter = CostMeter(next(clip.parameters()).device)
    # training cost: the train split's features and every block's fits (not val/test scoring)
    feats = {"train": layer_features(clip, processor, data.train.images, batch_size=cfg.batch_size, cache=cfg.cache)}
    train_seconds = time.perf_counter() - meter.t0
    for k, s in (("val", data.val), ("test", data.test)):
        if s is not None and len(s):
            feats[k] = layer_features(clip, processor, s.images, batch_size=cfg.batch_size, cache=cfg.cache)
    t_fit = time.perf_counter()
    rows, fits = layer_rows(feats, data, layers, n_boot=n_boot, seed=cfg.train_seed)
    train_seconds += time.perf_counter() - t_fit  # (includes the per-block bootstrap CIs, a small share)
    chosen = next(r for r in rows if r["chosen"])
    layer = int(chosen["layer"])
    probe = fits[layer].probe
    cost = with_flops(meter.record(trainable_params=probe.dim + 1,
                                   total_params=count_parameters(clip.parameters()) + probe.dim + 1,
                                   train_images=len(data.train), train_seconds=train_seconds), clip, cfg.image_size,
                      processor)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / LAYERS_CSV, rows)
    if cfg.figures:
        save_figure(layers_figure(rows, title=f"Layer-wise linear probe ({len(data.train)} training images)"),
                    out / LAYERS_FIGURE)
    det = ProbeDetector(clip, processor, probe, model_ref=model_reference(clip) or cfg.model,
                        detector="probe:layers", layer=layer, image_size=cfg.image_size)
    probe.save(out / WEIGHTS_FILE)
    selection = {"parameter": "layer, then C", "layers": layers, "chosen_layer": layer, "split": "val",
                 "metric": "ROC AUC (layer); log loss (C)", "C": fits[layer].best, "at_edge": fits[layer].at_edge}
    meta = {**det.to_json(), "selection": selection, "n_train": len(data.train), "layers_csv": LAYERS_CSV}
    metrics = write_run(out, test=data.test, p_test=probe.predict_proba(feats["test"][layer - 1]), val=data.val,
                        p_val=probe.predict_proba(feats["val"][layer - 1]), detector=meta, model=det.model_ref,
                        data=data.source, seed=cfg.train_seed, args={**(args or {}), "layers": cfg.layers},
                        seconds=time.perf_counter() - t0, n_boot=n_boot, cost=cost)
    return {**metrics, "layer": layer, "C": fits[layer].best, "selection": selection, "layers": rows}


__all__ = ["LAYERS_CSV", "LAYERS_FIGURE", "layer_rows", "run_layer_probe"]
