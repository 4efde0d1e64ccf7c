"""2-D views of CLIP image embeddings (PCA and t-SNE), coloured by label: before vs after fine-tuning.

Embeddings are CLIP's projected image features, L2-normalised (`features.image_features`), so
the geometry is the one the zero-shot head and the probe see.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cifake_lib import LABEL_NAMES

METHODS = ("pca", "tsne")
COLORS = ("tab:blue", "tab:red")  # REAL, FAKE


def project(x: Any, method: str = "pca", *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """(N, D) -> (N, 2) with scikit-learn's PCA or t-SNE (seeded; perplexity capped for small N).

    t-SNE is O(N^2) up to 1,000 points (exact) and Barnes-Hut above: a few thousand points at most
    is the sensible size for a figure.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"project: need an (N, D) array with N >= 3, got shape {x.shape}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(perplexity, max(1.0, (len(x) - 1) / 3)))
        # exact gradients for small sets: faster there than Barnes-Hut's tree (and its threads)
        algo = "exact" if len(x) <= 1000 else "barnes_hut"
        return TSNE(n_components=2, perplexity=perplexity, init="pca", method=algo,
                    random_state=seed).fit_transform(x)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def image_embeddings(detector_or_model: Any, images: np.ndarray, *, batch_size: int = 256,
                     device: Any = None, progress: bool = False) -> np.ndarray:
    """L2-normalised CLIP image embeddings (N, D) of a CLIP detector, a run folder or a model id/folder."""
    from cifake_lib.clip.features import image_features

    det = detector_or_model
    if isinstance(det, (str, os.PathLike)):
        from cifake_lib.methods.detectors import load_detector

        det = load_detector(det, device=device)
    if not hasattr(det, "model") or not hasattr(det, "processor"):
        raise ValueError(f"{type(det).__name__}: not a CLIP detector (no .model/.processor)")
    return image_features(det.model, det.processor, images, batch_size=batch_size, normalize=True,
                          progress=progress)


def embedding_figure(features: Mapping[str, np.ndarray], labels: Any, *,
                     methods: Sequence[str] = METHODS, seed: int = 0,
                     title: str = "Test image embeddings, coloured by label") -> Figure:
    """A grid: one row per method (PCA, t-SNE), one column per model ({name: (N, D) features})."""
    if not features:
        raise ValueError("embedding_figure: no features")
    y = np.asarray(labels)
    names = list(features)
    fig = Figure(figsize=(4.2 * len(names), 3.9 * len(methods)), layout="constrained")
    axes = fig.subplots(len(methods), len(names), squeeze=False)
    for j, name in enumerate(names):
        x = np.asarray(features[name])
        if len(x) != len(y):
            raise ValueError(f"embedding_figure: {name!r} has {len(x)} rows but there are {len(y)} labels")
        for i, method in enumerate(methods):
            xy = project(x, method, seed=seed)
            ax = axes[i, j]
            for label in (0, 1):
                m = y == label
                ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.6, color=COLORS[label],
                           label=f"{LABEL_NAMES[label]} (n={int(m.sum())})")
            ax.set_title(f"{name}: {'PCA' if method == 'pca' else 't-SNE'}", fontsize="small")
            ax.set_xticks([])
            ax.set_yticks([])
            if (i, j) == (0, 0):
                ax.legend(fontsize="x-small", markerscale=2)
    fig.suptitle(title)
    return fig


def separation(features: Any, labels: Any) -> float:
    """A number for "how separated are REAL and FAKE": the silhouette score (cosine) of the labels."""
    from sklearn.metrics import silhouette_score

    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        raise ValueError("separation: needs both REAL and FAKE")
    return float(silhouette_score(np.asarray(features), y, metric="cosine"))


def models_before_after(runs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """{title: model folder, Hub id or run folder} to embed: the pretrained CLIP and the fine-tuned one.

    From a fine-tuning run (finetune:both preferred): its base model (metrics "model") and the
    run itself. Without one, the pretrained model of the first CLIP run. Local model folders
    that no longer exist are left out.
    """
    def usable(ref: str) -> bool:
        p = Path(ref).expanduser()
        return p.exists() or (not p.is_absolute() and ref.count("/") == 1 and not ref.startswith("."))

    ft = [r for r in runs if str(r["metrics"].get("detector", "")).startswith("finetune")]
    ft.sort(key=lambda r: str(r["metrics"]["detector"]) != "finetune:both")
    clip = [r for r in runs if (r.get("detector") or {}).get("kind") in ("clip", "probe")]
    out: dict[str, str] = {}
    source = ft[0] if ft else (clip[0] if clip else None)
    if source is None:
        return out
    base = str(source["metrics"].get("model", ""))
    if base and usable(base):
        from cifake_lib.evaluation.scale import is_tiny_model

        before = "random weights" if is_tiny_model(base) else "pretrained"  # a tiny smoke CLIP was never trained
        out[f"{before} ({Path(base).name or base})"] = base
    if ft:
        out[f"fine-tuned ({ft[0]['metrics']['detector']})"] = str(ft[0]["path"])
    return out
