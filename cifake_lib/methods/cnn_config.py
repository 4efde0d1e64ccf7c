"""The CNN baseline's settings: the network (`CNNConfig`), its training (`TrainConfig`) and the stage.

Each field is a `cifake cnn` option and a key of the `[cnn]` table of a study's TOML.
Torch-free, so `cifake --help` stays light; the network and its training live in `cnn.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cifake_lib.core.config import setting

NET = "network (default: the paper's)"
TRAIN = "training"


@dataclass
class CNNConfig:
    """The network. The defaults are Bird & Lotfi's best topology (`paper()`)."""

    # one conv block per entry: conv 3x3 -> [BN] -> ReLU -> pool 2x2
    channels: tuple[int, ...] = setting((32, 32), "filters of each conv block, comma-separated", low=1,
                                        metavar="C,C", group=NET)
    kernel_size: int = setting(3, "conv kernel side", low=1, group=NET)
    padding: int = setting(0, "conv padding (0 = Keras' \"valid\", as in the paper)", low=0, group=NET)
    dense: int = setting(64, "units of the dense layer", low=1, group=NET)
    batch_norm: bool = setting(False, "add batch norm after each conv (not in the paper)", group=NET)
    dropout: float = setting(0.0, "dropout before the output layer", low=0.0, high=1.0, high_open=True, group=NET)
    image_size: int = setting(32, "the network's input side; other sizes are resized to it", low=8, group=NET)

    @classmethod
    def paper(cls) -> CNNConfig:
        """Exactly the paper's best network: 2x conv(32, 3x3) + maxpool(2x2), dense 64, sigmoid."""
        return cls(channels=(32, 32), kernel_size=3, padding=0, dense=64, batch_norm=False, dropout=0.0)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "architecture") -> CNNConfig:
        """The network from a saved dict, every field's type and range checked; messages start
        with `where` (the file and key it came from) and name the field."""
        from cifake_lib.core.config import build

        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a table of the network's settings, got {type(d).__name__}")
        return build(cls, d, where=where)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


@dataclass
class TrainConfig:
    """How to train (what the paper leaves open). Defaults: chosen on validation (bench/sweep_cnn.py)."""

    epochs: int = setting(15, "training epochs", low=1, group=TRAIN)
    # lr and batch size chosen on validation accuracy by bench/sweep_cnn.py (best of 6: 0.9283)
    batch_size: int = setting(128, "training batch size", low=1, group=TRAIN)
    lr: float = setting(4e-3, "peak Adam learning rate", low=0.0, low_open=True, group=TRAIN)
    min_lr_ratio: float = setting(0.02, "the cosine decays to lr x this", low=0.0, high=1.0, group=TRAIN)
    warmup_fraction: float = setting(0.03, "linear warm-up over this share of training", low=0.0, high=1.0,
                                     group=TRAIN)
    weight_decay: float = setting(0.0, "Adam weight decay", low=0.0, group=TRAIN)
    flip: bool = setting(True, "no random horizontal flips", group=TRAIN)
    seed: int = setting(0, "training seed: initialisation, shuffling, flips", key="train_seed", metavar="N",
                        group=TRAIN, show_default="the data --seed")
    # Seconds of training (validation included). The schedule then runs on whichever is further
    # along, steps or time, so the learning rate has annealed when the time is up; the result then
    # depends on the machine's speed (not deterministic).
    time_limit: float | None = setting(None, "train for at most this many seconds; the learning-rate "
                                       "schedule then follows the clock, so the model is annealed when "
                                       "time is up (not deterministic)", low=0.0, low_open=True,
                                       metavar="SECONDS", group=TRAIN)
    eval_batch_size: int = setting(1024, "images per scoring batch", low=1, group=TRAIN)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CnnStageConfig:
    """`cifake cnn`: the network, its training, and where to run it."""

    net: CNNConfig = field(default_factory=CNNConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str | None = setting(None, "cpu, cuda, cuda:1, mps", show_default="best available")
    n_boot: int = setting(1000, "bootstrap resamples for the metrics' 95% CIs", low=0)
    progress: bool = setting(True, "no progress bars", flags=("--quiet",))


__all__ = ["CNNConfig", "CnnStageConfig", "TrainConfig"]
