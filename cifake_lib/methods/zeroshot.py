"""Zero-shot CLIP: a text classifier built from prompts, and the `ClipDetector` (kind "clip").

The classifier follows open_clip: encode every template of a label, L2-normalise, average,
normalise again. An image's logits are `logit_scale * cos(image, label embedding)`, exactly
what `CLIPModel(...).logits_per_image` computes for one prompt per label, and
p_fake = softmax over (REAL, FAKE) of those logits. Class-aware prompt sets (`{class}`) use the
image's own CIFAR class when known and marginalise over the ten classes otherwise (see
`cifake_lib.clip.prompts`).

`ClipDetector` is also what the fine-tuning stage exports: a CLIP model folder plus prompts and
a threshold in detector.json, read back by `ClipDetector.from_run`.

`run_zeroshot` is the whole stage: one pass over the images (features cached on disk), then
every prompt set scored from the same features; one run folder per set plus summary.csv.
"""

from __future__ import annotations

import csv
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cifake_lib.clip.features import image_features, l2_normalize, text_features
from cifake_lib.clip.prompts import (
    DEFAULT_PROMPT_SET,
    MARGINALS,
    PromptSet,
    get_prompt_set,
    resolve_prompt_sets,
)
from cifake_lib.core.files import read_json

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cifake_lib.data.load import CifakeData, Split

KIND = "clip"
DETECTOR_FILE = "detector.json"
TEXT_EMBEDDINGS_FILE = "text_embeddings.safetensors"
SUMMARY_FILE = "summary.csv"

# ---------------------------------------------------------------------------
# The text classifier
# ---------------------------------------------------------------------------


@dataclass
class ZeroShotHead:
    """Label embeddings and a logit scale: image features -> (REAL, FAKE) logits.

    weights: (2, D), one unit vector per label (templates ensembled; for class-aware sets, over
    every class). class_weights: (2, C, D) per CIFAR class, class-aware sets only. marginal:
    how a class-aware set scores an image of unknown class, "logsumexp" (marginal of the joint
    (label, class) softmax) or "mean" (the `weights` classifier).
    """

    weights: np.ndarray
    logit_scale: float
    class_weights: np.ndarray | None = None
    marginal: str = "logsumexp"

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float32)
        if self.weights.ndim != 2 or self.weights.shape[0] != 2:
            raise ValueError(f"ZeroShotHead: weights must be (2, D), got {self.weights.shape}")
        if self.class_weights is not None:
            self.class_weights = np.asarray(self.class_weights, dtype=np.float32)
            if self.class_weights.ndim != 3 or self.class_weights.shape[0] != 2 \
                    or self.class_weights.shape[2] != self.weights.shape[1]:
                raise ValueError(f"ZeroShotHead: class_weights must be (2, C, {self.weights.shape[1]}), "
                                 f"got {self.class_weights.shape}")
        if self.marginal not in MARGINALS:
            raise ValueError(f"marginal must be one of {MARGINALS}, got {self.marginal!r}")

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def logits(self, features: np.ndarray, classes: np.ndarray | None = None, *,
               normalized: bool = False) -> np.ndarray:
        """(N, 2) float64 logits (REAL, FAKE) for image features (N, D), L2-normalised here
        unless `normalized` says they already are.

        classes: CIFAR class per image (-1 unknown); used by class-aware heads only.
        """
        x = np.asarray(features, dtype=np.float32)
        x = x if normalized else l2_normalize(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {x.shape}")
        scale = float(self.logit_scale)
        base = scale * (x @ self.weights.T).astype(np.float64)
        if self.class_weights is None:
            return base
        n_classes = self.class_weights.shape[1]
        flat = self.class_weights.reshape(-1, self.dim)  # (2 * C, D), label-major
        per_class = scale * (x @ flat.T).astype(np.float64).reshape(len(x), 2, n_classes)
        if self.marginal == "logsumexp":
            m = per_class.max(axis=2, keepdims=True)
            out = (m + np.log(np.exp(per_class - m).mean(axis=2, keepdims=True)))[..., 0]
        else:
            out = base
        if classes is not None:
            classes = np.asarray(classes, dtype=np.int64).ravel()
            if len(classes) != len(x):
                raise ValueError(f"classes has {len(classes)} entries but there are {len(x)} images")
            known = (classes >= 0) & (classes < n_classes)
            idx = np.flatnonzero(known)
            out[idx] = per_class[idx, :, classes[idx]]
        return out

    def p_fake(self, features: np.ndarray, classes: np.ndarray | None = None, *,
               normalized: bool = False) -> np.ndarray:
        """softmax over (REAL, FAKE) of the logits, FAKE column: sigmoid(logit_fake - logit_real)."""
        z = self.logits(features, classes, normalized=normalized)
        return 0.5 * (1.0 + np.tanh(0.5 * (z[:, 1] - z[:, 0])))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the head to safetensors (weights, class_weights, logit_scale; marginal in metadata)."""
        from safetensors.numpy import save_file

        from cifake_lib.core.files import atomic_write

        tensors = {"weights": self.weights, "logit_scale": np.array([self.logit_scale], dtype=np.float64)}
        if self.class_weights is not None:
            tensors["class_weights"] = self.class_weights
        return atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"marginal": self.marginal}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ZeroShotHead:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: text embeddings file not found")
        with safe_open(str(path), framework="numpy") as f:
            keys = set(f.keys())
            if not {"weights", "logit_scale"} <= keys:
                raise ValueError(f"{path}: needs 'weights' and 'logit_scale' tensors, has {sorted(keys)}")
            meta = f.metadata() or {}
            return cls(weights=f.get_tensor("weights"), logit_scale=float(f.get_tensor("logit_scale")[0]),
                       class_weights=f.get_tensor("class_weights") if "class_weights" in keys else None,
                       marginal=meta.get("marginal", "logsumexp"))


def _ensemble(emb: np.ndarray) -> np.ndarray:
    """normalize -> average -> normalize (open_clip's zero-shot classifier)."""
    return l2_normalize(l2_normalize(emb).mean(axis=0))


def _groups(prompts: PromptSet) -> list[list[str]]:
    """Prompt lists in head order: REAL, FAKE, then (class-aware) REAL per class, FAKE per class."""
    groups: list[list[str]] = [prompts.texts(0), prompts.texts(1)]
    if prompts.class_aware:
        for label in (0, 1):
            groups += [prompts.texts(label, c) for c in range(len(prompts.class_names))]
    return groups


def head_texts(prompts: PromptSet | str) -> list[str]:
    """Every unique prompt a prompt set's head needs encoded."""
    return list(dict.fromkeys(t for g in _groups(get_prompt_set(prompts)) for t in g))


def encode_texts(model, processor, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """{text: embedding} for unique `texts`, in one batched pass (share it between prompt sets)."""
    unique = list(dict.fromkeys(texts))
    return dict(zip(unique, text_features(model, processor, unique), strict=True))


def build_head(model, processor, prompts: PromptSet | str, *, marginal: str = "logsumexp",
               embeddings: Mapping[str, np.ndarray] | None = None) -> ZeroShotHead:
    """The zero-shot classifier of a prompt set: every unique prompt encoded once.

    embeddings: precomputed {text: embedding} (from `encode_texts`); missing texts are encoded.
    """
    prompts = get_prompt_set(prompts)
    groups = _groups(prompts)
    emb = dict(embeddings or {})
    missing = [t for t in head_texts(prompts) if t not in emb]
    if missing:
        emb.update(encode_texts(model, processor, missing))
    classifiers = [_ensemble(np.stack([emb[t] for t in g])) for g in groups]
    weights = np.stack(classifiers[:2])
    n_classes = len(prompts.class_names) if prompts.class_aware else 0
    class_weights = np.stack(classifiers[2:]).reshape(2, n_classes, -1) if n_classes else None
    logit_scale = float(model.logit_scale.detach().float().exp().item())
    return ZeroShotHead(weights=weights, logit_scale=logit_scale, class_weights=class_weights, marginal=marginal)


# ---------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------


def model_reference(model) -> str:
    """How detector.json names a model: an absolute folder path, or the Hub id it came from."""
    name = str(getattr(model, "name_or_path", "") or "")
    if name and Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return name


def resolve_model_ref(ref: str, run_dir: str | os.PathLike) -> str:
    """A detector.json "model": absolute path, path relative to the run dir, or a Hub id."""
    if not ref:
        raise ValueError(f"{Path(run_dir) / DETECTOR_FILE}: empty \"model\" entry")
    p = Path(ref).expanduser()
    if p.is_absolute():
        if not p.exists():
            raise FileNotFoundError(f"{Path(run_dir) / DETECTOR_FILE}: model folder {p} not found")
        return str(p)
    candidate = Path(run_dir) / p
    if candidate.exists():
        return str(candidate.resolve())
    if ref.startswith((".", "~")) or ref.count("/") > 1 or "\\" in ref or "/" not in ref:
        raise FileNotFoundError(f"{Path(run_dir) / DETECTOR_FILE}: model {ref!r} not found at {candidate} "
                                "(nor is it a Hub id like 'openai/clip-vit-base-patch32')")
    return ref  # "org/name": a Hub id


class ClipDetector:
    """CLIP + a prompt set (or precomputed text embeddings) + threshold: kind "clip".

    `predict_proba(images)` -> p_fake for uint8 images (N, H, W, 3) of any size, or a list of
    differently sized (H, W, 3) images. Class-aware prompt sets marginalise over the classes;
    `use_known_class=True` (an oracle, for analysis only) scores with `classes=` instead.
    """

    kind = KIND

    def __init__(self, model, processor, prompts: PromptSet | str | Mapping[str, Any] = DEFAULT_PROMPT_SET, *,
                 threshold: float = 0.5, head: ZeroShotHead | None = None, detector: str | None = None,
                 model_ref: str | None = None, marginal: str = "logsumexp", use_known_class: bool = False):
        self.model = model
        self.processor = processor
        self.prompts = get_prompt_set(prompts)
        self.threshold = float(threshold)
        self.head = head if head is not None else build_head(model, processor, self.prompts, marginal=marginal)
        self.detector = detector or f"zeroshot:{self.prompts.name}"
        self.model_ref = model_ref if model_ref is not None else model_reference(model)
        self.use_known_class = bool(use_known_class)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def image_features(self, images: Any, batch_size: int = 256, *, cache: bool = False,
                       progress: bool = False) -> np.ndarray:
        return image_features(self.model, self.processor, images, batch_size=batch_size, cache=cache,
                              progress=progress)

    def p_fake_from_features(self, features: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        return self.head.p_fake(features, classes if self.use_known_class else None)

    def predict_logits(self, images: Any, batch_size: int = 256, *, classes: np.ndarray | None = None,
                       progress: bool = False) -> np.ndarray:
        """(N, 2) logits (REAL, FAKE)."""
        feats = self.image_features(images, batch_size, progress=progress)
        return self.head.logits(feats, classes if self.use_known_class else None)

    def predict_proba(self, images: Any, batch_size: int = 256, *, classes: np.ndarray | None = None,
                      progress: bool = False, cache: bool = False) -> np.ndarray:
        """p_fake (N,) float64."""
        feats = self.image_features(images, batch_size, cache=cache, progress=progress)
        return self.p_fake_from_features(feats, classes)

    def predict(self, images: Any, batch_size: int = 256, **kwargs: Any) -> np.ndarray:
        """0/1 labels (1 = FAKE) at the detector's threshold."""
        return (self.predict_proba(images, batch_size, **kwargs) >= self.threshold).astype(np.int64)

    def to_json(self, model_ref: str | None = None) -> dict[str, Any]:
        """The detector.json dict (write_run adds/overrides "threshold")."""
        return {
            "kind": KIND,
            "detector": self.detector,
            "model": self.model_ref if model_ref is None else model_ref,
            "prompts": self.prompts.to_dict(),
            "marginal": self.head.marginal,
            "use_known_class": self.use_known_class and self.prompts.class_aware,
            "threshold": self.threshold,
        }

    def save(self, out_dir: str | os.PathLike, *, model_subdir: str | None = "model",
             text_embeddings: bool = False, extra: Mapping[str, Any] | None = None) -> Path:
        """Write detector.json into `out_dir`; with `model_subdir`, the model and processor too.

        model_subdir None keeps `model_ref` (a Hub id or an existing folder) instead of copying.
        text_embeddings: also store the head, so loading skips encoding the prompts.
        """
        from cifake_lib.core.files import follow_umask, write_json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        ref = self.model_ref
        if model_subdir is not None:
            self.model.save_pretrained(out / model_subdir)
            self.processor.save_pretrained(out / model_subdir)
            follow_umask(out / model_subdir)  # save_pretrained's safetensors file is 0600
            ref = model_subdir
        meta = {**self.to_json(ref), **(extra or {})}
        if text_embeddings:
            self.head.save(out / TEXT_EMBEDDINGS_FILE)
            meta["text_embeddings"] = TEXT_EMBEDDINGS_FILE
        write_json(out / DETECTOR_FILE, meta)
        return out

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, prompts: PromptSet | str = DEFAULT_PROMPT_SET, *,
                        threshold: float = 0.5, device: str | torch.device | None = None,
                        marginal: str = "logsumexp", **kwargs: Any) -> ClipDetector:
        """Zero-shot detector from a Hub id or a CLIP model folder (half precision on CUDA)."""
        model, processor = load_for_inference(name_or_path, device)
        return cls(model, processor, prompts, threshold=threshold, marginal=marginal, **kwargs)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str | torch.device | None = None) -> ClipDetector:
        """Load from a run folder (or its detector.json) with kind "clip"."""
        from cifake_lib.evaluation.runs import read_detector_json

        folder, meta = read_detector_json(run_dir, KIND)
        meta_path = folder / DETECTOR_FILE
        if "prompts" not in meta and "text_embeddings" not in meta:
            raise ValueError(f"{meta_path}: needs \"prompts\" ({{\"REAL\": [...], \"FAKE\": [...]}}) "
                             "or \"text_embeddings\"")
        prompts_meta = meta.get("prompts") or DEFAULT_PROMPT_SET
        try:
            prompts = (get_prompt_set(prompts_meta) if isinstance(prompts_meta, str)
                       else PromptSet.from_dict(prompts_meta, source=f"{meta_path} prompts"))
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"{meta_path}: {e}") from None
        model_ref = resolve_model_ref(str(meta.get("model") or ""), folder)
        model, processor = load_for_inference(model_ref, device)
        head = ZeroShotHead.load(folder / meta["text_embeddings"]) if meta.get("text_embeddings") else None
        return cls(model, processor, prompts, threshold=float(meta.get("threshold", 0.5)), head=head,
                   detector=meta.get("detector"), model_ref=model_ref,
                   marginal=meta.get("marginal", "logsumexp"),
                   use_known_class=bool(meta.get("use_known_class", False)))

    def __repr__(self) -> str:
        return (f"ClipDetector(detector={self.detector!r}, model={self.model_ref!r}, "
                f"threshold={self.threshold:.4f}, device={self.device})")


def load_for_inference(name_or_path: str | os.PathLike, device: str | torch.device | None = None):
    """`models.load_clip` on `device` (default: the best available), half precision on CUDA."""
    from cifake_lib.clip.models import inference_dtype, load_clip, pick_device

    dev = device if isinstance(device, torch.device) else pick_device(str(device) if device else None)
    return load_clip(name_or_path, device=dev, dtype=inference_dtype(dev))


# ---------------------------------------------------------------------------
# Figures for a run folder (shared with the probe stage)
# ---------------------------------------------------------------------------

FIGURES = ("roc", "pr", "confusion", "histogram", "reliability")


def run_figures(labels: np.ndarray, p_fake: np.ndarray, metrics: Mapping[str, Any], *,
                val_labels: np.ndarray | None = None, p_val: np.ndarray | None = None,
                name: str = "detector") -> dict[str, Figure]:
    """The five figures of a run, {key: Figure} in FIGURES order (a figure that cannot be drawn,
    e.g. ROC on a one-class subset, is left out with a warning).

    roc, pr; confusion and histogram at the run's threshold (metrics["threshold"], from val);
    reliability, with the scores after temperature scaling fitted on validation when given.
    """
    import warnings

    from cifake_lib.evaluation.metrics import apply_temperature, fit_temperature
    from cifake_lib.viz import plots

    y, p = np.asarray(labels), np.asarray(p_fake, dtype=np.float64)
    threshold = float(metrics.get("threshold", 0.5))
    p_cal = None
    if val_labels is not None and p_val is not None and len(np.unique(val_labels)) == 2:
        p_cal = apply_temperature(p, fit_temperature(val_labels, p_val))
    makers = {
        "roc": lambda: plots.roc_figure({name: (y, p)}, title=f"ROC — {name} (test)"),
        "pr": lambda: plots.pr_figure({name: (y, p)}, title=f"Precision-recall — {name} (test)"),
        "confusion": lambda: plots.confusion_figure(metrics, title=f"{name}: threshold {threshold:.3f} (from val)"),
        "histogram": lambda: plots.histogram_figure(y, p, threshold=threshold, title=f"p_fake — {name} (test)"),
        "reliability": lambda: plots.reliability_figure(y, p, p_calibrated=p_cal, title=f"Reliability — {name}"),
    }
    figs: dict[str, Figure] = {}
    for key in FIGURES:
        try:
            figs[key] = makers[key]()
        except ValueError as e:
            warnings.warn(f"{name}: no {key} figure ({e})", stacklevel=2)
    return figs


def figures_from_run(run_dir: str | os.PathLike, name: str | None = None) -> dict[str, Figure]:
    """`run_figures` for a run folder, from its predictions.csv, predictions_val.csv and metrics.json."""
    from cifake_lib.evaluation.runs import read_run

    run = read_run(run_dir)
    test, val = run["predictions"], run["predictions_val"]
    if test is None:
        raise FileNotFoundError(f"{run['path']}: no predictions.csv")
    return run_figures(test["label"], test["p_fake"], run["metrics"],
                       val_labels=val["label"] if val is not None else None,
                       p_val=val["p_fake"] if val is not None else None,
                       name=name or run["metrics"].get("detector") or run["path"].name)


def save_run_figures(out_dir: str | os.PathLike, *, test: Split, p_test: np.ndarray, metrics: Mapping[str, Any],
                     val: Split | None = None, p_val: np.ndarray | None = None,
                     name: str = "detector") -> list[Path]:
    """Write roc.png, pr.png, confusion.png, histogram.png, reliability.png into `out_dir`."""
    from cifake_lib.viz import plots

    figs = run_figures(test.labels, p_test, metrics, val_labels=val.labels if val is not None else None,
                       p_val=p_val, name=name)
    return [plots.save_figure(fig, Path(out_dir) / f"{key}.png") for key, fig in figs.items()]


class TextTable(str):
    """A plain-text table that notebooks display as itself (no quotes)."""

    def __repr__(self) -> str:
        return str(self)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, digits: int = 4):
    """Rows as a pandas DataFrame when pandas is installed, else as a plain-text table (str).

    For notebooks: `display(table(rows))` either way.
    """
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    data = [[r.get(c) for c in columns] for r in rows]
    try:
        import pandas as pd
    except ImportError:
        def fmt(v: Any) -> str:
            return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

        cells = [columns] + [[fmt(v) for v in row] for row in data]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        return TextTable("\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True))
                                   for row in cells))
    return pd.DataFrame(data, columns=columns).round(digits)


# ---------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------

SUMMARY_COLUMNS = (
    "prompt_set", "detector", "accuracy", "roc_auc", "average_precision", "f1", "precision", "recall",
    "ece", "brier", "threshold", "accuracy_ci_lo", "accuracy_ci_hi", "roc_auc_ci_lo", "roc_auc_ci_hi",
    "natural_accuracy", "natural_f1", "natural_precision", "natural_recall",
    "val_roc_auc", "val_accuracy", "n", "templates_real", "templates_fake", "class_aware",
    "uses_known_class", "best_on_val",
)


def folder_name(name: str) -> str:
    """A prompt set's run folder name: letters, digits, '-', '_' and '.' only."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return safe or "prompts"


def summary_row(prompts: PromptSet, metrics: Mapping[str, Any], metrics_val: Mapping[str, Any] | None,
                uses_known_class: bool) -> dict[str, Any]:
    nat = metrics.get("natural_threshold") or {}
    acc_ci = metrics.get("accuracy_ci95") or [None, None]
    auc_ci = metrics.get("roc_auc_ci95") or [None, None]
    return {
        "prompt_set": prompts.name, "detector": metrics.get("detector"),
        **{k: metrics.get(k) for k in ("accuracy", "roc_auc", "average_precision", "f1", "precision", "recall",
                                       "ece", "brier", "threshold")},
        "accuracy_ci_lo": acc_ci[0], "accuracy_ci_hi": acc_ci[1],
        "roc_auc_ci_lo": auc_ci[0], "roc_auc_ci_hi": auc_ci[1],
        "natural_accuracy": nat.get("accuracy"), "natural_f1": nat.get("f1"),
        "natural_precision": nat.get("precision"), "natural_recall": nat.get("recall"),
        "val_roc_auc": (metrics_val or {}).get("roc_auc"), "val_accuracy": (metrics_val or {}).get("accuracy"),
        "n": metrics.get("n"), "templates_real": len(prompts.real), "templates_fake": len(prompts.fake),
        "class_aware": prompts.class_aware, "uses_known_class": uses_known_class, "best_on_val": False,
    }


def best_on_val(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The prompt set with the highest validation ROC AUC (ties: validation accuracy)."""
    scored = [r for r in rows if r.get("val_roc_auc") is not None]
    if not scored:
        return None
    return max(scored, key=lambda r: (r["val_roc_auc"], r.get("val_accuracy") or 0.0))["prompt_set"]


def write_summary(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """summary.csv: one row per prompt set (SUMMARY_COLUMNS), atomically."""
    from cifake_lib.core.files import write_csv

    return write_csv(path, rows, SUMMARY_COLUMNS)


def read_summary(path: str | os.PathLike) -> list[dict[str, Any]]:
    """summary.csv back as dicts: numbers as float, booleans as bool, blanks as None."""
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: summary.csv not found")
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for r in csv.DictReader(f):
            out: dict[str, Any] = {}
            for k, v in r.items():
                if v == "":
                    out[k] = None
                elif v in ("True", "False"):
                    out[k] = v == "True"
                else:
                    try:
                        out[k] = float(v) if k not in ("prompt_set", "detector") else v
                    except ValueError:
                        out[k] = v
            rows.append(out)
    return rows


@dataclass
class ZeroShotResult:
    out_dir: Path
    rows: list[dict[str, Any]]  # summary.csv rows, in prompt-set order
    metrics: dict[str, dict[str, Any]]  # prompt set -> test metrics
    best: str | None  # chosen on validation AUC
    feature_seconds: float  # scoring: the image pass (val + test), the text pass and every head
    seconds: float


def score_prompt_sets(model, processor, splits: Mapping[str, Split], prompts: str | Sequence[str | PromptSet],
                      *, batch_size: int = 256, cache: bool = True, marginal: str = "logsumexp",
                      progress: bool = True) -> tuple[dict[str, ZeroShotHead], dict[str, dict[str, np.ndarray]]]:
    """p_fake of every prompt set on every split, from one image pass and one text pass.

    Returns ({set: head}, {set: {split: p_fake}}). Class-aware sets marginalise over the ten
    classes, as `predict` must: a detector does not know a test image's true class.
    """
    sets = resolve_prompt_sets(prompts)
    feats = {k: image_features(model, processor, s.images, batch_size=batch_size, cache=cache, progress=progress,
                               desc=f"CLIP features ({k})", normalize=True) for k, s in splits.items()}
    # Every prompt of every set in one text pass: on a CPU, per-call overhead outweighs the work.
    embeddings = encode_texts(model, processor, [t for ps in sets for t in head_texts(ps)])
    heads = {ps.name: build_head(model, processor, ps, marginal=marginal, embeddings=embeddings) for ps in sets}
    scores = {name: {k: head.p_fake(feats[k], None, normalized=True) for k in splits}
              for name, head in heads.items()}
    return heads, scores


def run_zeroshot(data: CifakeData, out_dir: str | os.PathLike, *, model: str | os.PathLike | None = None,
                 prompts: str | Sequence[str | PromptSet] | None = "all", batch_size: int = 256,
                 device: str | torch.device | None = None, cache: bool = True, figures: bool = True,
                 marginal: str = "logsumexp", args: Mapping[str, Any] | None = None, n_boot: int = 1000,
                 progress: bool = True) -> ZeroShotResult:
    """Score every prompt set from one pass over val and test; write `out_dir/<set>/` and summary.csv.

    Thresholds come from validation (runs.write_run); the natural threshold 0.5 is reported too.
    Class-aware sets marginalise over the CIFAR classes (never the image's own class).
    """
    from cifake_lib.clip.models import DEFAULT_MODEL
    from cifake_lib.evaluation.published import published_anchors
    from cifake_lib.evaluation.runs import write_run
    from cifake_lib.viz import plots

    t0 = time.perf_counter()
    out = Path(out_dir)
    sets = resolve_prompt_sets(prompts)
    names = [folder_name(s.name) for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"prompt set names collide as folder names: {names}")
    model_name = os.fspath(model) if model is not None else DEFAULT_MODEL
    clip, processor = load_for_inference(model_name, device)
    model_ref = model_reference(clip) or model_name

    splits = {"test": data.test} | ({"val": data.val} if data.val is not None and len(data.val) else {})
    t_feat = time.perf_counter()
    heads, scores = score_prompt_sets(clip, processor, splits, sets, batch_size=batch_size, cache=cache,
                                      marginal=marginal, progress=progress)
    feature_seconds = time.perf_counter() - t_feat
    val = splits.get("val")

    rows: list[dict[str, Any]] = []
    all_metrics: dict[str, dict[str, Any]] = {}
    for ps, folder in zip(sets, names, strict=True):
        t_set = time.perf_counter()
        det = ClipDetector(clip, processor, ps, head=heads[ps.name], model_ref=model_ref)
        p_test, p_val = scores[ps.name]["test"], scores[ps.name].get("val")
        m = write_run(out / folder, test=data.test, p_test=p_test, val=val, p_val=p_val, detector=det.to_json(),
                      model=model_ref, data=data.source, seed=int((args or {}).get("seed", 0)),
                      args={**(args or {}), "prompt_set": ps.name, "batch_size": batch_size},
                      seconds=feature_seconds + time.perf_counter() - t_set, n_boot=n_boot)
        m_val = read_json(out / folder / "metrics_val.json") if val is not None else None
        rows.append(summary_row(ps, m, m_val, det.use_known_class and ps.class_aware))
        all_metrics[ps.name] = m
        if figures:
            save_run_figures(out / folder, test=data.test, p_test=p_test, metrics=m, val=val, p_val=p_val,
                             name=f"zero-shot: {ps.name}")

    best = best_on_val(rows)
    for r in rows:
        r["best_on_val"] = r["prompt_set"] == best
    write_summary(out / SUMMARY_FILE, rows)
    if figures:
        bar_rows = [{**all_metrics[r["prompt_set"]], "name": r["prompt_set"]} for r in rows]
        # Published zero-shot figures tune no threshold: they sit beside our accuracy at 0.5.
        plots.save_figure(plots.compare_bar(bar_rows, "roc_auc", published=published_anchors(
            "roc_auc", setting="zero-shot"), title="Zero-shot CLIP: test ROC AUC per prompt set (95% CI)"),
            out / "compare_roc_auc.png")
        plots.save_figure(plots.compare_bar(bar_rows, "accuracy",
                                            title="Zero-shot CLIP: test accuracy at the validation threshold (95% CI)"),
            out / "compare_accuracy.png")
        plots.save_figure(plots.roc_figure({n: (data.test.labels, scores[n]["test"]) for n in scores},
                                           title="Zero-shot CLIP: ROC per prompt set (test)"), out / "roc_all.png")
    return ZeroShotResult(out_dir=out, rows=rows, metrics=all_metrics, best=best,
                          feature_seconds=feature_seconds, seconds=time.perf_counter() - t0)


__all__ = [
    "ZeroShotHead",
    "ClipDetector",
    "ZeroShotResult",
    "build_head",
    "encode_texts",
    "head_texts",
    "run_zeroshot",
    "score_prompt_sets",
    "save_run_figures",
    "run_figures",
    "figures_from_run",
    "table",
    "best_on_val",
    "read_summary",
    "write_summary",
    "resolve_model_ref",
    "model_reference",
    "load_for_inference",
]
