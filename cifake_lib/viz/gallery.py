"""Qualitative results: the most confident right and wrong test images, shown with p_fake.

Images come from the data split, matched to predictions.csv by id (`match_ids`). They are
enlarged by pixel repetition (nearest neighbour) only, so every 32x32 pixel stays visible
as it is; no smoothing invents detail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cifake_lib import CIFAR_CLASSES
from cifake_lib.core.formatting import format_metric

# Gallery groups: (key, true label, whether the detector was right, heading)
GROUPS: tuple[tuple[str, int, bool, str], ...] = (
    ("real_right", 0, True, "REAL, called REAL (most confident)"),
    ("real_wrong", 0, False, "REAL, called FAKE (most confident)"),
    ("fake_right", 1, True, "FAKE, called FAKE (most confident)"),
    ("fake_wrong", 1, False, "FAKE, called REAL (most confident)"),
)


def match_ids(pred_ids: Sequence[str], split_ids: Sequence[str]) -> np.ndarray:
    """Index into the split for each prediction id; -1 where the split lacks that id."""
    where = {str(s): i for i, s in enumerate(np.asarray(split_ids).tolist())}
    return np.array([where.get(str(p), -1) for p in np.asarray(pred_ids).tolist()], dtype=np.int64)


def confident_examples(labels: Any, p_fake: Any, threshold: float, k: int = 8) -> dict[str, np.ndarray]:
    """Indices of the k most confident examples of each group in GROUPS.

    "Confident" is distance from the threshold on the side the detector chose: the REAL
    images it called REAL with the lowest p_fake, the REAL images it called FAKE with the
    highest, and so on. Ties keep the input order.
    """
    y = np.asarray(labels)
    p = np.asarray(p_fake, dtype=np.float64)
    called_fake = p >= threshold
    out = {}
    for key, label, right, _ in GROUPS:
        mask = (y == label) & (called_fake == (label == 1) if right else called_fake != (label == 1))
        idx = np.flatnonzero(mask)
        high_first = called_fake[idx] if len(idx) else np.zeros(0, bool)
        # called FAKE: most confident = highest p; called REAL: lowest p
        score = np.where(high_first, -p[idx], p[idx])
        out[key] = idx[np.argsort(score, kind="stable")[:k]]
    return out


def upsample_nearest(image: np.ndarray, scale: int) -> np.ndarray:
    """Repeat each pixel `scale` x `scale` times: (H, W, C) -> (H*scale, W*scale, C), no new values."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    return np.repeat(np.repeat(np.asarray(image), scale, axis=0), scale, axis=1)


def gallery_figure(images: np.ndarray, groups: Mapping[str, np.ndarray], p_fake: Any, *,
                   classes: Any = None, scale: int = 4, title: str = "") -> Figure:
    """One row per group of GROUPS: its images (nearest-neighbour enlarged) titled with p_fake.

    images: (N, H, W, 3) uint8 aligned with p_fake (and classes, when given); groups: the
    output of `confident_examples`. Empty groups show "none".
    """
    keys = [g for g in GROUPS if g[0] in groups]
    cols = max([1] + [len(groups[g[0]]) for g in keys])
    fig = Figure(figsize=(1.25 * cols + 0.4, 1.55 * len(keys) + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(keys), cols, squeeze=False))
    p = np.asarray(p_fake, dtype=np.float64)
    for row, (key, _, _, heading) in enumerate(keys):
        idx = groups[key]
        for col in range(cols):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(idx):
                i = int(idx[col])
                ax.imshow(upsample_nearest(images[i], scale), interpolation="nearest")
                label = f"p={format_metric(p[i], digits=3)}"
                if classes is not None and 0 <= int(classes[i]) < len(CIFAR_CLASSES):
                    label += f"\n{CIFAR_CLASSES[int(classes[i])]}"
                ax.set_title(label, fontsize="x-small")
            elif col == 0:
                ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        # Horizontal, on three short lines: a vertical label is taller than its row of images.
        axes[row, 0].set_ylabel(heading.replace(", ", ",\n", 1).replace(" (", "\n("), fontsize="x-small",
                                rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    return fig


def confident_picks(run: Mapping[str, Any], split: Any, k: int = 8
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
    """The run's (read_run dict) most confident right and wrong test images that `split` holds.

    Returns (rows, split_rows, groups): rows, the prediction rows whose id the split has;
    split_rows, where those images lie in the split; groups, `confident_examples` of the matched
    predictions at the run's threshold (positions in rows). None when the run has no predictions
    or none of its ids is in the split (e.g. it was made on other data).
    """
    preds = run.get("predictions")
    if preds is None:
        return None
    index = match_ids(preds["id"], split.ids)
    rows = np.flatnonzero(index >= 0)
    if not len(rows):
        return None
    groups = confident_examples(preds["label"][rows], preds["p_fake"][rows], float(run["metrics"]["threshold"]), k)
    return rows, index[rows], groups


def run_gallery(run: Mapping[str, Any], split: Any, *, k: int = 8, scale: int = 4) -> Figure | None:
    """The gallery of one run (read_run dict) from its test predictions and the test `split`.

    Predictions whose ids the split lacks are left out; None when none match (e.g. the run
    was made on other data) or the run has no predictions.
    """
    picked = confident_picks(run, split, k)
    if picked is None:
        return None
    rows, split_rows, groups = picked
    preds = run["predictions"]
    images = np.asarray(split.images)[split_rows]
    name = run.get("name") or run["metrics"].get("detector")
    return gallery_figure(images, groups, preds["p_fake"][rows], classes=preds["cifar_class"][rows], scale=scale,
                          title=f"{name}: most confident right and wrong test images "
                                f"(threshold {float(run['metrics']['threshold']):.3f})")
