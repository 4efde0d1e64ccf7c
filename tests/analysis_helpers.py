"""Small synthetic run folders for the analysis tests (compare, report, widgets, robustness)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifake_lib.data.load import Split
from cifake_lib.evaluation.runs import write_run


def synthetic_split(n: int, *, seed: int = 0, prefix: str = "test") -> Split:
    """n random 32x32 images, labels alternating REAL/FAKE, CIFAR classes cycling, Kaggle-style ids."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    classes = (np.arange(n) // 2) % 10
    ids = [f"{prefix}/{'FAKE' if y else 'REAL'}/{i} ({c + 1}).jpg" if c else f"{prefix}/{'FAKE' if y else 'REAL'}/{i}.jpg"
           for i, (y, c) in enumerate(zip(labels, classes, strict=True))]
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return Split(images, labels, classes, np.array(ids))


def scores(split: Split, strength: float, seed: int) -> np.ndarray:
    """p_fake that separates the labels with `strength` (0: chance)."""
    rng = np.random.default_rng(seed)
    z = strength * (2.0 * split.labels - 1.0) + rng.normal(0, 1, len(split))
    return 1.0 / (1.0 + np.exp(-z))


def make_run(out: Path, detector: str, *, strength: float = 1.5, val_strength: float | None = None,
             n: int = 200, seed: int = 0, model: str = "tiny", val: bool = True, kind: str = "probe",
             test: Split | None = None) -> dict:
    """A complete run folder (runs.write_run) with synthetic scores; returns its metrics."""
    test = test if test is not None else synthetic_split(n, seed=100)
    val_split = synthetic_split(max(20, n // 2), seed=200, prefix="train") if val else None
    vs = strength if val_strength is None else val_strength
    return write_run(out, test=test, p_test=scores(test, strength, seed),
                     val=val_split, p_val=scores(val_split, vs, seed + 1) if val else None,
                     detector={"kind": kind, "detector": detector}, model=model, data="synthetic",
                     seed=0, args={"n": n}, seconds=1.0, n_boot=200)
