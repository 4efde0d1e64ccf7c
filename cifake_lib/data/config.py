"""What data a stage loads: the settings every data-reading command shares (docs/architecture.md,
"Data flow").

Torch-free, so `cifake --help` stays light. `load_data(cfg)` loads what they describe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cifake_lib.core.config import setting

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData

GROUP = "data"


def parse_subset(value: Any) -> tuple[int, int]:
    """"TRAIN:TEST" (or [TRAIN, TEST]) -> (train, test); both totals per split, half FAKE each."""
    try:
        parts = value.split(":") if isinstance(value, str) else list(value)
        train, test = (int(x) for x in parts)
        if any(isinstance(x, bool | float) for x in parts):
            raise ValueError
    except (ValueError, TypeError):
        raise ValueError(f"wants TRAIN:TEST, two integers, got {value!r}") from None
    if train <= 0 or test <= 0:
        raise ValueError(f"sizes must be positive, got {value!r}")
    return train, test


@dataclass
class DataConfig:
    """CIFAKE source, subset, validation split and the seed of both."""

    data: str | None = setting(
        None, "folder or .tar/.tar.gz/.zip archive in the Kaggle layout, hf[:REPO], kaggle[:HANDLE] or "
        "github", metavar="SRC", group=GROUP, show_default="$CIFAKE_DATA, else hf")
    subset: tuple[int, int] | None = setting(
        None, "stratified subset sizes, e.g. 16000:4000", convert=parse_subset, metavar="TRAIN:TEST",
        group=GROUP, show_default="all")
    val_fraction: float = setting(0.1, "fraction of the train subset held out for validation", low=0.0,
                                  high=1.0, high_open=True, metavar="F", group=GROUP)
    seed: int = setting(0, "seed for the subset and the validation split (and for training, unless "
                        "--train-seed is given)", group=GROUP)
    train_size: int | None = setting(
        None, "training images kept after the validation split: nested and stratified (a smaller size's "
        "set is inside a larger one's), the same validation and test for every size", low=2, metavar="N",
        group=GROUP, show_default="all")
    dedup: bool = setting(False, "drop test images whose exact content also occurs in train", group=GROUP)
    skip_bad: bool = setting(False, "skip unreadable image files (and report them) instead of stopping",
                             group=GROUP)


def load_data(cfg: DataConfig, *, progress: bool = True) -> CifakeData:
    """`load_cifake` with these settings."""
    from cifake_lib.data.load import load_cifake

    return load_cifake(cfg.data, subset=cfg.subset, val_fraction=cfg.val_fraction, seed=cfg.seed,
                       dedup=cfg.dedup, skip_bad=cfg.skip_bad, progress=progress,
                       train_size=cfg.train_size)


def loaded(data: DataConfig | CifakeData, *, progress: bool = True) -> tuple[CifakeData, DataConfig | None]:
    """What a method reads: (the loaded data, its settings or None when it came loaded)."""
    if isinstance(data, DataConfig):
        return load_data(data, progress=progress), data
    return data, None


__all__ = ["DataConfig", "load_data", "loaded", "parse_subset"]
