"""The linear probe's model, its fitting and its detector (the method, `cifake probe`, is `methods.probe`).

Features: CLIP's projected image embeddings, L2-normalised, then standardised with the
training split's mean and standard deviation (well-conditioned for L-BFGS, and it makes one C
grid fit every model). Logistic regression (scikit-learn) with the inverse regularisation C
chosen on the validation split by log loss over a log grid; the chosen model is the one fitted
on train (validation stays clean for the threshold, which `runs.write_run` picks on it).
Optional MLP: one hidden ReLU layer (sklearn MLPClassifier), its L2 penalty chosen the same way.

Saved as safetensors (`probe.safetensors`): mean, scale (the normalisation), coef and
intercept (logistic regression) or layers.<i>.weight / .bias (MLP); never pickle. Scoring
always goes through `ProbeModel.decision_function` (float64 numpy), so a fresh and a loaded
probe give identical p_fake.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifake_lib.clip.features import image_features, l2_normalize

KIND = "probe"
WEIGHTS_FILE = "probe.safetensors"
DETECTOR_FILE = "detector.json"
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))  # 1e-4 ... 1e2, half a decade apart
DEFAULT_ALPHAS = (1e-4, 1e-2)  # MLP L2 penalties tried
DEFAULT_HIDDEN = (512,)
logger = logging.getLogger(__name__)


@dataclass
class ProbeModel:
    """Normalisation + layers: p_fake = sigmoid(layers(standardise(l2_normalize(features))))."""

    mean: np.ndarray
    scale: np.ndarray
    weights: list[np.ndarray]  # (out, in) per layer; the last has out = 1
    biases: list[np.ndarray]
    kind: str = "logreg"  # or "mlp"
    hyper: dict[str, Any] = field(default_factory=dict)  # C or alpha, hidden sizes

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64).ravel()
        self.scale = np.asarray(self.scale, dtype=np.float64).ravel()
        self.weights = [np.asarray(w, dtype=np.float64) for w in self.weights]
        self.biases = [np.asarray(b, dtype=np.float64).ravel() for b in self.biases]
        if self.kind not in ("logreg", "mlp"):
            raise ValueError(f"probe kind must be 'logreg' or 'mlp', got {self.kind!r}")
        if not self.weights or len(self.weights) != len(self.biases):
            raise ValueError("probe needs one bias per weight matrix")
        if self.weights[0].shape[1] != len(self.mean) or self.weights[-1].shape[0] != 1:
            raise ValueError(f"probe layers do not fit {len(self.mean)}-d features -> 1 logit")

    @property
    def dim(self) -> int:
        return len(self.mean)

    def transform(self, features: np.ndarray) -> np.ndarray:
        x = l2_normalize(np.asarray(features, dtype=np.float32)).astype(np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {x.shape}")
        return (x - self.mean) / self.scale

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """Logits (N,), float64."""
        z = self.transform(features)
        for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            z = np.maximum(z @ w.T + b, 0.0)
        return (z @ self.weights[-1].T + self.biases[-1])[:, 0]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        z = self.decision_function(features)
        return 0.5 * (1.0 + np.tanh(0.5 * z))

    # -- safetensors ---------------------------------------------------------

    def tensors(self) -> dict[str, np.ndarray]:
        t = {"mean": self.mean, "scale": self.scale}
        if self.kind == "logreg":
            t["coef"] = self.weights[0][0]
            t["intercept"] = self.biases[0]
        else:
            for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
                t[f"layers.{i}.weight"], t[f"layers.{i}.bias"] = w, b
        return {k: np.ascontiguousarray(v) for k, v in t.items()}

    def save(self, path: str | os.PathLike) -> Path:
        import json

        from safetensors.numpy import save_file

        from cifake_lib.core.files import atomic_write

        meta = {"kind": self.kind, "n_layers": str(len(self.weights)), "hyper": json.dumps(self.hyper),
                "normalisation": "l2, then (x - mean) / scale"}
        return atomic_write(path, lambda p: save_file(self.tensors(), str(p), metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProbeModel:
        import json

        from safetensors import safe_open

        from cifake_lib.core.weights import check_safetensors

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: probe weights not found")
        check_safetensors(path)  # a cut or pickled file: one line naming it
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
        kind = meta.get("kind", "logreg" if "coef" in t else "mlp")
        try:
            if kind == "logreg":
                weights, biases = [t["coef"].reshape(1, -1)], [t["intercept"].reshape(1)]
            else:
                n = int(meta.get("n_layers", sum(k.endswith(".weight") for k in t)))
                weights = [t[f"layers.{i}.weight"] for i in range(n)]
                biases = [t[f"layers.{i}.bias"] for i in range(n)]
            return cls(mean=t["mean"], scale=t["scale"], weights=weights, biases=biases, kind=kind,
                       hyper=json.loads(meta.get("hyper", "{}")))
        except KeyError as e:
            raise ValueError(f"{path}: missing tensor {e} for a {kind} probe") from None


# ---------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------


@dataclass
class ProbeFit:
    probe: ProbeModel
    grid: list[float]  # the values tried (C, or alpha for the MLP)
    val_log_loss: list[float]  # selection scores, lower is better
    best: float
    selection_split: str  # "val" or "train holdout" (when no validation split was given)
    at_edge: bool = False  # the chosen value is still at an edge of the (extended) grid


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean, np.where(scale > 1e-12, scale, 1.0)


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hold = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        hold[idx[: max(1, int(round(fraction * len(idx))))]] = True
    return np.flatnonzero(~hold), np.flatnonzero(hold)


def _fit_one(z: np.ndarray, y: np.ndarray, value: float, mlp: bool, hidden: Sequence[int], seed: int,
             warm: Any = None):
    """Fit one model; `warm` (logistic regression only) is refitted from its current solution."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if mlp:
            clf = MLPClassifier(hidden_layer_sizes=tuple(hidden), alpha=value, max_iter=300, early_stopping=True,
                                n_iter_no_change=10, random_state=seed)
        elif warm is not None:
            clf = warm.set_params(C=value)
        else:
            clf = LogisticRegression(C=value, max_iter=1000, tol=1e-5)
        return clf.fit(z, y)


def _to_probe(clf, mean: np.ndarray, scale: np.ndarray, mlp: bool, hyper: dict[str, Any]) -> ProbeModel:
    if mlp:
        if clf.out_activation_ != "logistic" or clf.activation != "relu":
            raise ValueError("MLP probe must be binary with ReLU hidden layers")
        return ProbeModel(mean, scale, [w.T.copy() for w in clf.coefs_], [b.copy() for b in clf.intercepts_],
                          kind="mlp", hyper=hyper)
    # Copies: a warm-started estimator is refitted after this.
    return ProbeModel(mean, scale, [clf.coef_.reshape(1, -1).copy()], [clf.intercept_.reshape(1).copy()],
                      kind="logreg", hyper=hyper)


def fit_probe(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray | None = None,
              val_labels: np.ndarray | None = None, *, mlp: bool = False, grid: Sequence[float] | None = None,
              hidden: Sequence[int] = DEFAULT_HIDDEN, seed: int = 0, progress: bool = True,
              extend: int = 2) -> ProbeFit:
    """Fit on train for each grid value, keep the one with the lowest validation log loss.

    grid: C values (logistic regression; default 1e-4..1e2, 13 points) or L2 alphas (MLP).
    When the best value sits at an edge of a grid of 3 or more values, a warning says so and the
    grid is extended past that edge by three values at its own spacing, up to `extend` times; a
    value still at the edge then is flagged (`at_edge`) with a warning.
    Without a validation split, 20% of train (stratified, seeded) is held out for the choice
    and the chosen value is refitted on all of train.
    """
    from sklearn.linear_model import LogisticRegression
    from tqdm.auto import tqdm

    y = np.asarray(train_labels, dtype=np.int64).ravel()
    x = l2_normalize(np.asarray(train_features, dtype=np.float32)).astype(np.float64)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"train features {x.shape} and labels {y.shape} do not match")
    if len(np.unique(y)) != 2:
        raise ValueError("the probe needs both REAL and FAKE training images")
    grid = list(grid if grid is not None else (DEFAULT_ALPHAS if mlp else DEFAULT_CS))
    if not grid or any(not v > 0 for v in grid):
        raise ValueError(f"grid values must be positive, got {grid}")
    refit = val_features is None
    if refit:
        fit_idx, sel_idx = _holdout(y, 0.2, seed)
        x_fit, y_fit, x_sel, y_sel = x[fit_idx], y[fit_idx], x[sel_idx], y[sel_idx]
    else:
        x_fit, y_fit = x, y
        x_sel = l2_normalize(np.asarray(val_features, dtype=np.float32)).astype(np.float64)
        y_sel = np.asarray(val_labels, dtype=np.int64).ravel()
    mean, scale = _standardiser(x_fit)
    z_fit, z_sel = (x_fit - mean) / scale, (x_sel - mean) / scale
    key = "alpha" if mlp else "C"
    # Logistic regression walks the grid from strong to weak regularisation, each fit starting
    # from the previous solution (a regularisation path): far fewer L-BFGS steps in all.
    warm = None if mlp else LogisticRegression(max_iter=1000, tol=1e-5, warm_start=True)
    hyper_of = (lambda v: {key: v, "hidden": list(hidden)}) if mlp else (lambda v: {key: v})
    tried: dict[float, tuple[float, ProbeModel]] = {}

    def fit_values(values: Sequence[float]) -> None:
        for value in tqdm(values, desc=f"probe: {key} grid", disable=not progress, leave=False):
            clf = _fit_one(z_fit, y_fit, value, mlp, hidden, seed, warm)
            loss = _log_loss(y_sel, clf.predict_proba(z_sel)[:, 1])
            tried[float(value)] = (loss, _to_probe(clf, mean, scale, mlp, hyper_of(float(value))))  # a copy

    fit_values(sorted(grid))
    for _ in range(extend):
        chosen = min(tried, key=lambda v: tried[v][0])
        more = _extension(sorted(tried), chosen)
        if not more:
            break
        logger.warning(f"probe: the chosen {key} ({chosen:g}) is at the edge of "  # the message only, no source line
                       f"the grid; extending it with {', '.join(f'{v:g}' for v in more)}")
        fit_values(more)
    grid = sorted(tried)
    losses = [tried[v][0] for v in grid]
    best_i = int(np.argmin(losses))  # ties: the first, i.e. the strongest regularisation
    best = float(grid[best_i])
    at_edge = bool(_extension(grid, best))  # the first or last of three or more values
    if at_edge:
        logger.warning(f"probe: the chosen {key} ({best:g}) is still at the edge of the grid tried "
                       f"({grid[0]:g}..{grid[-1]:g}); a wider grid may fit better")
    if refit:
        mean, scale = _standardiser(x)
        probe = _to_probe(_fit_one((x - mean) / scale, y, best, mlp, hidden, seed), mean, scale, mlp, hyper_of(best))
    else:
        probe = tried[best][1]
    return ProbeFit(probe=probe, grid=[float(v) for v in grid], val_log_loss=losses, best=best,
                    selection_split="train holdout" if refit else "val", at_edge=at_edge)


def _extension(grid: Sequence[float], best: float, steps: int = 3) -> list[float]:
    """Grid values beyond the edge where `best` sits, at the grid's own log spacing (none if inside).

    A two-value grid has no interior, so it is never extended.
    """
    if len(grid) < 3 or grid[0] < best < grid[-1]:
        return []
    if best == grid[-1]:
        ratio = grid[-1] / grid[-2]
        return [best * ratio ** k for k in range(1, steps + 1)]
    ratio = grid[1] / grid[0]
    return [best / ratio ** k for k in range(1, steps + 1)]


# ---------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------


class ProbeDetector:
    """A backbone's image features -> probe: kind "probe". `predict_proba(images)` -> p_fake.

    adapter: a CLIP-Adapter applied to the features first (an image-only encoder fine-tuned with
    one); image_size: the input side the run chose (None: the model's own)."""

    kind = KIND

    def __init__(self, model, processor, probe: ProbeModel, *, threshold: float = 0.5,
                 detector: str | None = None, model_ref: str | None = None, layer: int | None = None,
                 adapter: Any = None, image_size: int | None = None):
        from cifake_lib.methods.zeroshot import model_reference

        self.adapter = adapter
        self.image_size = image_size
        self.model = model
        self.processor = processor
        self.probe = probe
        self.threshold = float(threshold)
        self.detector = detector or ("probe:mlp" if probe.kind == "mlp" else "probe")
        self.model_ref = model_ref if model_ref is not None else model_reference(model)
        self.layer = None if layer is None else int(layer)  # the layer-wise probe: a vision block's features

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def p_fake_from_features(self, features: np.ndarray) -> np.ndarray:
        return self.probe.predict_proba(features)

    def predict_proba(self, images: Any, batch_size: int = 256, *, progress: bool = False,
                      cache: bool = False) -> np.ndarray:
        """p_fake (N,) float64 for uint8 images (N, H, W, 3) of any size, or a list of them."""
        if self.layer is not None:  # methods.layer_probe: one vision block's class token
            from cifake_lib.clip.layers import layer_features

            if isinstance(images, list):
                images = np.stack(images)  # one size: the layer-wise probe's images are one array
            return self.probe.predict_proba(layer_features(self.model, self.processor, images, batch_size=batch_size,
                                                           cache=cache)[self.layer - 1])
        feats = image_features(self.model, self.processor, images, batch_size=batch_size, cache=cache,
                               progress=progress)
        return self.p_fake_from_features(feats if self.adapter is None else self.adapter.adapt(feats))

    def to_json(self, model_ref: str | None = None) -> dict[str, Any]:
        from cifake_lib.clip.adapter import ADAPTER_FILE

        extra = ({"image_size": self.image_size} if self.image_size is not None else {}) | (
            {"clip_adapter": ADAPTER_FILE} if self.adapter is not None else {})
        return extra | {
            "kind": KIND,
            "detector": self.detector,
            "model": self.model_ref if model_ref is None else model_ref,
            "weights": WEIGHTS_FILE,
            "probe": self.probe.kind,
            **self.probe.hyper,
            "features": "CLIP projected image embeddings, L2-normalised, standardised (train mean/std)",
            "threshold": self.threshold,
        } | ({"layer": self.layer, "features": f"vision block {self.layer}'s class token, post_layernorm, visual "
              "projection, L2-normalised, standardised (train mean/std)"} if self.layer is not None else {})

    def save(self, out_dir: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """probe.safetensors + detector.json (the CLIP model by reference)."""
        from cifake_lib.core.files import write_json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.probe.save(out / WEIGHTS_FILE)
        write_json(out / DETECTOR_FILE, {**self.to_json(), **(extra or {})})
        return out

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str | torch.device | None = None) -> ProbeDetector:
        """Load from a run folder (or its detector.json) with kind "probe"."""
        from cifake_lib.clip.adapter import ClipAdapter
        from cifake_lib.clip.backbone import embed_dim
        from cifake_lib.evaluation.runs import read_detector_json
        from cifake_lib.methods.zeroshot import load_for_inference, resolve_model_ref

        folder, meta = read_detector_json(run_dir, KIND)
        meta_path = folder / DETECTOR_FILE
        probe = ProbeModel.load(folder / str(meta.get("weights") or WEIGHTS_FILE))
        model_ref = resolve_model_ref(str(meta.get("model") or ""), folder)
        model, processor = load_for_inference(model_ref, device, image_size=meta.get("image_size"))
        dim = embed_dim(model)
        if dim != probe.dim:
            raise ValueError(f"{meta_path}: probe expects {probe.dim}-d features but {model_ref} gives {dim}")
        adapter = ClipAdapter.load(folder / meta["clip_adapter"]).to(next(model.parameters()).device) \
            if meta.get("clip_adapter") else None
        return cls(model, processor, probe, threshold=float(meta.get("threshold", 0.5)),
                   detector=meta.get("detector"), model_ref=model_ref, layer=meta.get("layer"), adapter=adapter,
                   image_size=meta.get("image_size"))

    def __repr__(self) -> str:
        return (f"ProbeDetector(detector={self.detector!r}, model={self.model_ref!r}, "
                f"threshold={self.threshold:.4f}, {self.probe.kind} {self.probe.hyper})")




__all__ = ["DEFAULT_CS", "KIND", "WEIGHTS_FILE", "ProbeDetector", "ProbeFit", "ProbeModel", "fit_probe"]
