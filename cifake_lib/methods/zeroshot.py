"""Zero-shot CLIP: the `ClipDetector` (kind "clip") and the zero-shot stage.

The head (prompts -> label embeddings -> logits, p_fake) is `cifake_lib.clip.head`;
`ClipDetector` pairs it with a CLIP model and a threshold. It is also what the fine-tuning
stage exports: a CLIP model folder plus prompts and a threshold in detector.json, read back by
`ClipDetector.from_run`.

`run` is the whole stage: one pass over the images (features cached on disk), then
every prompt set scored from the same features; one run folder per set plus summary.csv.
"""

from __future__ import annotations

import csv
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cifake_lib.clip.adapter import ADAPTER_FILE, ClipAdapter
from cifake_lib.clip.coop import CONTEXT_FILE, PromptContext
from cifake_lib.clip.features import image_features
from cifake_lib.clip.head import ZeroShotHead, build_head, encode_texts, head_texts
from cifake_lib.clip.prompts import (
    DEFAULT_PROMPT_SET,
    PromptSet,
    get_prompt_set,
    resolve_prompt_sets,
)
from cifake_lib.core.files import read_json
from cifake_lib.core.results import RunResult, settings_record
from cifake_lib.data.config import DataConfig, loaded
from cifake_lib.methods.config import ZeroshotConfig
from cifake_lib.viz.run_figures import (  # noqa: F401  (notebooks import these names from here)
    figures_from_run,
    save_run_figures,
    table,
)

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData, Split

KIND = "clip"
DETECTOR_FILE = "detector.json"
TEXT_EMBEDDINGS_FILE = "text_embeddings.safetensors"
SUMMARY_FILE = "summary.csv"

# ---------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------


def model_reference(model) -> str:
    """The model a detector was built on: an absolute folder path, or the Hub id it came from.
    (A run folder records a folder relative to itself: `evaluation.runs.write_run`.)"""
    name = str(getattr(model, "name_or_path", "") or "")
    if name and Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return name


def resolve_model_ref(ref: str, run_dir: str | os.PathLike) -> str:
    """A detector.json "model": a path relative to the run dir, an absolute path, or a Hub id.

    A folder that is not where it was recorded (a study copied or moved, recorded before paths
    were kept relative) is looked for under the same name beside the run and its parents.
    """
    from cifake_lib.core.paths import find_moved, resolve_recorded

    where = Path(run_dir) / DETECTOR_FILE
    if not ref:
        raise ValueError(f"{where}: empty \"model\" entry")
    found = resolve_recorded(ref, run_dir)
    if found is not None:
        return str(found)
    p = Path(ref).expanduser()
    is_path = p.is_absolute() or ref.startswith((".", "~")) or ref.count("/") != 1 or "\\" in ref
    if not is_path:
        return ref  # "org/name": a Hub id
    moved = find_moved(ref, run_dir, accept=lambda d: (d / "config.json").is_file())
    if moved is not None:
        return str(moved)
    raise FileNotFoundError(f"{where}: model folder {ref!r} not found ({p if p.is_absolute() else Path(run_dir) / p}), "
                            "nor a folder of that name beside the run or its parents")


class ClipDetector:
    """CLIP + a prompt set (or precomputed text embeddings) + threshold: kind "clip".

    `predict_proba(images)` -> p_fake for uint8 images (N, H, W, 3) of any size, or a list of
    differently sized (H, W, 3) images. Class-aware prompt sets marginalise over the classes;
    `use_known_class=True` (an oracle, for analysis only) scores with `classes=` instead.
    """

    kind = KIND

    def __init__(self, model, processor, prompts: PromptSet | str | Mapping[str, Any] = DEFAULT_PROMPT_SET, *,
                 threshold: float = 0.5, head: ZeroShotHead | None = None, detector: str | None = None,
                 model_ref: str | None = None, marginal: str = "logsumexp", use_known_class: bool = False,
                 context: PromptContext | None = None, adapter: ClipAdapter | None = None,
                 image_size: int | None = None):
        from cifake_lib.clip.backbone import require_text

        require_text(model, "a zero-shot detector")
        self.model = model
        self.image_size = image_size  # the input side the run chose; None: the model's own
        self.processor = processor
        self.prompts = get_prompt_set(prompts)
        self.threshold = float(threshold)
        self.context = context  # CoOp: learned prompts replace the prompt set's texts
        self.adapter = adapter  # CLIP-Adapter: applied to the image features before the head
        if head is None and context is not None:
            with torch.no_grad():
                head = context.to(self.device).head(model, marginal)
        self.head = head if head is not None else build_head(model, processor, self.prompts, marginal=marginal)
        self.detector = detector or f"zeroshot:{self.prompts.name}"
        self.model_ref = model_ref if model_ref is not None else model_reference(model)
        self.use_known_class = bool(use_known_class)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def image_features(self, images: Any, batch_size: int = 256, *, cache: bool = False,
                       progress: bool = False) -> np.ndarray:
        feats = image_features(self.model, self.processor, images, batch_size=batch_size, cache=cache,
                               progress=progress)
        return feats if self.adapter is None else self.adapter.adapt(feats)

    def p_fake_from_features(self, features: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        return self.head.p_fake(features, classes if self.use_known_class else None)

    def predict_logits(self, images: Any, batch_size: int = 256, *, classes: np.ndarray | None = None,
                       progress: bool = False) -> np.ndarray:
        """(N, 2) float64 logits (REAL, FAKE)."""
        feats = self.image_features(images, batch_size, progress=progress)
        with torch.no_grad():
            z = self.head.logits(feats, classes if self.use_known_class else None)
        return z.double().cpu().numpy()

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
        meta = {
            "kind": KIND,
            "detector": self.detector,
            "model": self.model_ref if model_ref is None else model_ref,
            "prompts": self.prompts.to_dict(),
            "marginal": self.head.marginal,
            "use_known_class": self.use_known_class and self.prompts.class_aware,
            "threshold": self.threshold,
            "head": "sigmoid per label (SigLIP), renormalised over the two" if self.head.sigmoid
            else "softmax over the two labels (CLIP)",
        }
        if self.image_size is not None:
            meta["image_size"] = self.image_size
        if self.context is not None:
            meta |= {"prompt_context": CONTEXT_FILE, "n_ctx": self.context.n_ctx,
                     "label_words": list(self.context.label_words)}
        if self.adapter is not None:
            meta |= {"clip_adapter": ADAPTER_FILE, "adapter_reduction": self.adapter.reduction,
                     "adapter_ratio": self.adapter.ratio}
        return meta

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
            from cifake_lib.clip.models import quiet_transformers

            with quiet_transformers():  # no "Writing model shards" bar
                self.model.save_pretrained(out / model_subdir)
                self.processor.save_pretrained(out / model_subdir)
            follow_umask(out / model_subdir)  # save_pretrained's safetensors file is 0600
            ref = model_subdir
        meta = {**self.to_json(ref), **(extra or {})}
        if self.context is not None:
            self.context.save(out / CONTEXT_FILE)
        if self.adapter is not None:
            self.adapter.save(out / ADAPTER_FILE)
        if text_embeddings:
            self.head.save(out / TEXT_EMBEDDINGS_FILE)
            meta["text_embeddings"] = TEXT_EMBEDDINGS_FILE
        write_json(out / DETECTOR_FILE, meta)
        return out

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, prompts: PromptSet | str = DEFAULT_PROMPT_SET, *,
                        threshold: float = 0.5, device: str | torch.device | None = None,
                        marginal: str = "logsumexp", image_size: int | None = None, **kwargs: Any) -> ClipDetector:
        """Zero-shot detector from a Hub id or a CLIP or SigLIP model folder (half precision on CUDA)."""
        model, processor = load_for_inference(name_or_path, device, image_size=image_size)
        return cls(model, processor, prompts, threshold=threshold, marginal=marginal, image_size=image_size, **kwargs)

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
        image_size = meta.get("image_size")
        model, processor = load_for_inference(model_ref, device, image_size=image_size)
        head = ZeroShotHead.load(folder / meta["text_embeddings"]) if meta.get("text_embeddings") else None
        context = PromptContext.load(folder / meta["prompt_context"], processor.tokenizer, model) \
            if meta.get("prompt_context") else None
        adapter = ClipAdapter.load(folder / meta["clip_adapter"]).to(next(model.parameters()).device) \
            if meta.get("clip_adapter") else None
        return cls(model, processor, prompts, threshold=float(meta.get("threshold", 0.5)), head=head,
                   context=context, adapter=adapter,
                   detector=meta.get("detector"), model_ref=model_ref,
                   marginal=meta.get("marginal", "logsumexp"),
                   use_known_class=bool(meta.get("use_known_class", False)), image_size=image_size)

    def __repr__(self) -> str:
        return (f"ClipDetector(detector={self.detector!r}, model={self.model_ref!r}, "
                f"threshold={self.threshold:.4f}, device={self.device})")


def load_for_inference(name_or_path: str | os.PathLike, device: str | torch.device | None = None, *,
                       image_size: int | None = None):
    """`models.load_backbone` on `device` (default: the best available), half precision on CUDA;
    image_size: its input side, when the run used another than the model's own."""
    from cifake_lib.clip.models import inference_dtype, load_backbone, pick_device

    dev = device if isinstance(device, torch.device) else pick_device(str(device) if device else None)
    return load_backbone(name_or_path, device=dev, dtype=inference_dtype(dev), image_size=image_size)


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


def run(data: DataConfig | CifakeData, cfg: ZeroshotConfig, out: str | os.PathLike) -> RunResult:
    """Every prompt set of `cfg.prompts` scored from one pass over val and test: one run folder per
    set under `out`, plus summary.csv (`best` in `.info`: the set with the best validation AUC).

    Thresholds come from validation (runs.write_run); the natural threshold 0.5 is reported too.
    Class-aware sets marginalise over the CIFAR classes (never the image's own class).
    """
    from cifake_lib.core.backbones import has_text_tower

    t0 = time.perf_counter()
    out = Path(out)
    sets = resolve_prompt_sets(cfg.prompts)  # once per run: a bad name fails before data or model load
    if has_text_tower(cfg.model) is False:  # (a study plans such a run as skipped and never calls this)
        raise ValueError(f"model: zero-shot needs a text tower; {cfg.model} is an image-only encoder")
    names = [folder_name(s.name) for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"prompt set names collide as folder names: {names}")
    from cifake_lib.clip.backbone import require_text

    cifake, dcfg = loaded(data, progress=cfg.progress)
    clip, processor = load_for_inference(cfg.model, cfg.device, image_size=cfg.image_size)
    require_text(clip, f"zero-shot ({cfg.model})")
    model_ref = model_reference(clip) or cfg.model
    splits = {"test": cifake.test} | ({"val": cifake.val} if cifake.val is not None and len(cifake.val) else {})
    t_feat = time.perf_counter()
    heads, scores = score_prompt_sets(clip, processor, splits, sets, batch_size=cfg.batch_size, cache=cfg.cache,
                                      marginal=cfg.marginal, progress=cfg.progress)
    feature_seconds = time.perf_counter() - t_feat
    args = settings_record("zeroshot", dcfg, cfg, out=out)
    from cifake_lib.methods.cost import cost_record, count_parameters, with_flops

    # nothing is trained: the cost of zero-shot is the backbone it loads, and no training time
    cost = with_flops(cost_record(trainable_params=0, total_params=count_parameters(clip.parameters()),
                                  peak_memory_bytes=None, peak_memory_kind="not trained", train_seconds=0.0,
                                  train_images=0, device=str(next(clip.parameters()).device.type)),
                      clip, cfg.image_size, processor)
    rows, all_metrics = [], {}
    for ps, folder in zip(sets, names, strict=True):
        t_set = time.perf_counter()
        det = ClipDetector(clip, processor, ps, head=heads[ps.name], model_ref=model_ref, image_size=cfg.image_size)
        m = _write_set(cifake, out / folder, det, scores[ps.name], args=args, seed=dcfg.seed if dcfg else 0,
                       seconds=feature_seconds + time.perf_counter() - t_set, cfg=cfg, cost=cost)
        m_val = read_json(out / folder / "metrics_val.json") if "val" in splits else None
        rows.append(summary_row(ps, m, m_val, det.use_known_class and ps.class_aware))
        all_metrics[ps.name] = m
    best = best_on_val(rows)
    for r in rows:
        r["best_on_val"] = r["prompt_set"] == best
    write_summary(out / SUMMARY_FILE, rows)
    if cfg.figures:
        _summary_figures(cifake, out, rows, all_metrics, scores)
    return RunResult("zeroshot", out, runs=[out / n for n in names], metrics=all_metrics,
                     seconds=time.perf_counter() - t0,
                     info={"best": best, "rows": rows, "feature_seconds": feature_seconds})


def _write_set(cifake: CifakeData, folder: Path, det: ClipDetector, scores: Mapping[str, np.ndarray], *,
               args: Mapping[str, Any], seed: int, seconds: float, cfg: ZeroshotConfig,
               cost: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One prompt set's run folder (its figures too, unless cfg.figures is off); its test metrics."""
    from cifake_lib.evaluation.runs import write_run

    val = cifake.val if "val" in scores else None
    m = write_run(folder, test=cifake.test, p_test=scores["test"], val=val, p_val=scores.get("val"),
                  detector=det.to_json(), model=det.model_ref, data=cifake.source, seed=seed,
                  args={**args, "prompt_set": det.prompts.name}, seconds=seconds, n_boot=cfg.n_boot, cost=cost)
    if cfg.figures:
        save_run_figures(folder, test=cifake.test, p_test=scores["test"], metrics=m, val=val,
                         p_val=scores.get("val"), name=f"zero-shot: {det.prompts.name}")
    return m


def _summary_figures(cifake: CifakeData, out: Path, rows: Sequence[Mapping[str, Any]],
                     all_metrics: Mapping[str, Mapping[str, Any]], scores: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    from cifake_lib.evaluation.published import published_anchors
    from cifake_lib.viz import plots

    bar_rows = [{**all_metrics[r["prompt_set"]], "name": r["prompt_set"]} for r in rows]
    # Published zero-shot figures tune no threshold: they sit beside our accuracy at 0.5.
    plots.save_figure(plots.compare_bar(bar_rows, "roc_auc", published=published_anchors(
        "roc_auc", setting="zero-shot"), title="Zero-shot CLIP: test ROC AUC per prompt set (95% CI)"),
        out / "compare_roc_auc.png")
    plots.save_figure(plots.compare_bar(bar_rows, "accuracy",
                                        title="Zero-shot CLIP: test accuracy at the validation threshold (95% CI)"),
                      out / "compare_accuracy.png")
    plots.save_figure(plots.roc_figure({n: (cifake.test.labels, scores[n]["test"]) for n in scores},
                                       title="Zero-shot CLIP: ROC per prompt set (test)"), out / "roc_all.png")


def read_zeroshot(out_dir: str | os.PathLike) -> RunResult:
    """A finished zero-shot folder read back (summary.csv and each set's metrics.json) as `run`
    returned it, nothing rescored. Notebooks use it to show a study's runs without writing into them."""
    out = Path(out_dir)
    rows = read_summary(out)
    metrics = {r["prompt_set"]: read_json(out / folder_name(r["prompt_set"]) / "metrics.json") for r in rows}
    # Every set's run.json counts the shared image pass once, so the longest is the stage's time.
    runs = [out / folder_name(r["prompt_set"]) for r in rows]
    seconds = max((float(read_json(f / "run.json").get("seconds") or 0.0) for f in runs
                   if (f / "run.json").is_file()), default=0.0)
    return RunResult("zeroshot", out, runs=runs, metrics=metrics, seconds=seconds,
                     info={"best": best_on_val(rows), "rows": rows, "feature_seconds": 0.0})


__all__ = [
    "ClipDetector",
    "run",
    "read_zeroshot",
    "score_prompt_sets",
    "best_on_val",
    "read_summary",
    "write_summary",
    "resolve_model_ref",
    "model_reference",
    "load_for_inference",
]
