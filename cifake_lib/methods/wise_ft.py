"""WiSE-FT: weight-space ensembles of the zero-shot and the fine-tuned CLIP.

Wortsman, Ilharco, Kim, Li, Kornblith, Roelofs, Lopes, Hajishirzi, Farhadi, Namkoong and
Schmidt, "Robust fine-tuning of zero-shot models", CVPR 2022. For each mixing weight alpha,

    theta(alpha) = (1 - alpha) * theta_zero-shot + alpha * theta_fine-tuned

(alpha = 0 is the starting model, alpha = 1 the fine-tuned one). Each theta(alpha) is scored as
a zero-shot classifier with the run's prompts on the validation split; the alpha with the best
validation ROC AUC (ties: the larger alpha) is chosen. Each alpha's model also scores the test
split, but the test columns are read only after the choice, for the report's curve: they
choose nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cifake_lib.methods.training import val_scores

if TYPE_CHECKING:
    from cifake_lib.data.load import Split

WISE_FT_FILE = "wise_ft.csv"
COLUMNS = ("alpha", "val_roc_auc", "val_accuracy", "test_roc_auc", "test_accuracy", "chosen")


def interpolate(zero_shot: Mapping[str, torch.Tensor], fine_tuned: Mapping[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * zero_shot + alpha * fine_tuned for every floating tensor (others: fine_tuned's).

    Both state dicts must hold the same keys and shapes (the same architecture).
    """
    if set(zero_shot) != set(fine_tuned):
        diff = sorted(set(zero_shot) ^ set(fine_tuned))[:5]
        raise ValueError(f"WiSE-FT: the two models differ in their weights (e.g. {diff})")
    out = {}
    for key, ft in fine_tuned.items():
        zs = zero_shot[key]
        if zs.shape != ft.shape:
            raise ValueError(f"WiSE-FT: {key} is {tuple(zs.shape)} in one model and {tuple(ft.shape)} in the other")
        if not ft.is_floating_point():
            out[key] = ft.clone()
            continue
        # alpha 0 and 1 give either model exactly (no rounding from the mix)
        out[key] = zs.clone() if alpha == 0 else ft.clone() if alpha == 1 else \
            ((1.0 - alpha) * zs.double() + alpha * ft.double()).to(ft.dtype)
    return out


def choose_alpha(rows: Sequence[Mapping[str, Any]]) -> float:
    """The alpha of the best validation AUC (NaN counts as worst; ties: the larger alpha)."""
    def key(r: Mapping[str, Any]) -> tuple[float, float]:
        auc = r["val_roc_auc"]
        return (-np.inf if auc is None or np.isnan(auc) else auc, r["alpha"])

    return float(max(rows, key=key)["alpha"])


def wise_ft_curve(zero_shot: Mapping[str, torch.Tensor], fine_tuned: Mapping[str, torch.Tensor],
                  alphas: Sequence[float], *, make_detector, val: Split, test: Split,
                  batch_size: int = 256) -> list[dict[str, Any]]:
    """Score theta(alpha) for every alpha on val (accuracy at 0.5, AUC) and choose by val alone.

    Each alpha's detector is built once and scores both splits; the test columns are read only
    after the choice, for the curve. make_detector(state_dict) -> a detector
    (`predict_proba(images, batch_size, classes=)`) with those weights (it may reuse one model).
    Returns the rows (COLUMNS) in alpha order.
    """
    def auc_accuracy(split: Split, p: np.ndarray) -> tuple[float, float]:
        s = val_scores(split.labels, p, p >= 0.5)
        return s["val_auc"], s["val_accuracy"]

    rows, test_p = [], {}
    for alpha in sorted(alphas):
        det = make_detector(interpolate(zero_shot, fine_tuned, alpha))
        val_auc, val_acc = auc_accuracy(val, det.predict_proba(val.images, batch_size, classes=val.classes))
        test_p[alpha] = det.predict_proba(test.images, batch_size, classes=test.classes)  # set aside
        rows.append({"alpha": alpha, "val_roc_auc": val_auc, "val_accuracy": val_acc})
    best = choose_alpha(rows)  # reads only val_roc_auc
    for r in rows:  # test: after the choice, for the curve only
        r["test_roc_auc"], r["test_accuracy"] = auc_accuracy(test, test_p[r["alpha"]])
        r["chosen"] = r["alpha"] == best
    return rows


__all__ = ["COLUMNS", "WISE_FT_FILE", "choose_alpha", "interpolate", "wise_ft_curve"]
