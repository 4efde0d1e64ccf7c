"""What the training loops share: the learning-rate schedule, the state of a run (step, epoch,
position, best validation score, patience, history) and the validation scores that choose the
kept model.

The fine-tuning loop (`methods.finetune`) and the CIFAKE paper's CNN (`methods.cnn`) both warm up
linearly and decay on a cosine to a floor, and both keep the model with the best validation
score, never a test score.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cifake_lib.data.load import Split


def warmup_cosine(lr: float, min_lr_ratio: float, *, warmup: float, progress: float) -> float:
    """The learning rate of a linear warm-up followed by a cosine decay to lr * min_lr_ratio.

    warmup: the share of the warm-up done, in (0, 1], or >= 1 once it is over; progress: the
    share of the cosine done (clamped to [0, 1]). Callers map steps or seconds onto these.
    """
    if warmup < 1.0:
        return lr * warmup
    progress = min(1.0, max(0.0, progress))
    min_lr = lr * min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def val_scores(labels: np.ndarray, scores: np.ndarray, predicted_fake: np.ndarray) -> dict[str, float]:
    """{"val_accuracy", "val_auc"}: accuracy of `predicted_fake` (bool per image) and ROC AUC of
    `scores` (any score increasing with FAKE); AUC is NaN when one label is missing."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, dtype=np.int64)
    acc = float((np.asarray(predicted_fake).astype(np.int64) == labels).mean())
    auc = float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")
    return {"val_accuracy": acc, "val_auc": auc}


def _empty_window() -> dict[str, float]:
    return {"loss": 0.0, "correct": 0, "seen": 0, "steps": 0}


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint (state.json) so a resumed run continues exactly.

    position: optimizer steps done in the current epoch. best: the best validation score so far
    (None until a finite one is seen); patience: evaluations since it. window: the sums since
    the last log record, so a resumed run logs the same values.
    """

    step: int = 0
    epoch: int = 0
    position: int = 0
    best: Any = None
    best_step: int | None = None
    patience: int = 0
    status: str = "running"  # running | finished | early_stopped | stopped
    history: list[dict[str, Any]] = field(default_factory=list)
    window: dict[str, float] = field(default_factory=_empty_window)

    def observe(self, score: Any) -> bool:
        """Count one evaluation; True when `score` beats the best so far (the first one always does).

        A NaN score never counts as a best value (the next finite score improves on it).
        """
        nan = isinstance(score, float) and math.isnan(score)
        improved = self.best is None or (not nan and score > self.best)
        if improved:
            self.best, self.best_step, self.patience = (None if nan else score), self.step, 0
        else:
            self.patience += 1
        return improved

    def advance(self, steps_per_epoch: int) -> bool:
        """One optimizer step done; True when it ended an epoch."""
        self.step += 1
        self.position += 1
        if self.position >= steps_per_epoch:
            self.epoch += 1
            self.position = 0
            return True
        return False

    def reset_window(self) -> None:
        self.window = _empty_window()

    def to_json(self) -> dict[str, Any]:
        """The checkpoint's state.json fields (history is saved in its own file)."""
        d = asdict(self)
        d.pop("history")
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], history: list[dict[str, Any]] | None = None) -> TrainState:
        known = {k: d[k] for k in ("step", "epoch", "position", "best", "best_step", "patience", "status",
                                   "window") if k in d}
        if isinstance(known.get("best"), list):  # a tuple score (the CNN's (accuracy, AUC)): JSON gave a list
            known["best"] = tuple(known["best"])
        return cls(**known, history=list(history or []))


def data_fingerprint(train: Split, val: Split | None) -> str:
    """A hash of the train/val ids, labels and ~1000 of their images: a resumed run must see the same data."""
    h = hashlib.sha256()
    for split in (train, val):
        if split is None:
            h.update(b"none")
            continue
        h.update(str(len(split)).encode())
        h.update("\n".join(map(str, getattr(split, "ids", range(len(split))))).encode())
        h.update(np.ascontiguousarray(np.asarray(split.labels, dtype=np.int64)).tobytes())
        h.update(np.ascontiguousarray(split.images[::max(1, len(split) // 1000)]).tobytes())
    return h.hexdigest()[:16]


__all__ = ["TrainState", "data_fingerprint", "val_scores", "warmup_cosine"]
