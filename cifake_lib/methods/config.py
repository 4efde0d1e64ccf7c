"""Settings of the frozen-CLIP stages (zero-shot, probe) and of scoring saved detectors.

Each field is a CLI option of its command and a key of the command's TOML table. Torch-free,
so `cifake --help` stays light. Fine-tuning and the CNN have their own modules
(`finetune_config.py`, `cnn_config.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from cifake_lib.core.config import setting
from cifake_lib.core.settings import DEFAULT_MODEL

MARGINALS = ("logsumexp", "mean")
SPLITS = ("test", "val")
DEVICE_HELP = "cpu, cuda, cuda:1, mps"
BEST_DEVICE = "best available"
N_BOOT_HELP = "bootstrap resamples for the metrics' 95% CIs"
EXTERNAL = "external test set"
DETECTOR_HELP = "a run folder (fine-tuned CLIP, zero-shot, probe, CNN), a CLIP model folder or Hub id"


def _prompt_names() -> str:
    from cifake_lib.clip.prompts import PROMPT_SETS  # pure Python: no torch

    return ", ".join(PROMPT_SETS)


@dataclass
class ZeroshotConfig:
    """`cifake zeroshot`: every prompt set scored from one pass over the images."""

    model: str = setting(DEFAULT_MODEL, "CLIP or SigLIP Hub id or local model folder", metavar="M")
    image_size: int | None = setting(None, "input side in pixels (position embeddings interpolated when it differs "
                                     "from the model's own)", low=8, metavar="PX", show_default="the model's own")
    prompts: str = setting("all", f"prompt sets: 'all' or any of {_prompt_names()}, or a .json/.toml file "
                           "{\"REAL\": [...], \"FAKE\": [...]}; comma-separated", metavar="NAME[,NAME...]")
    marginal: str = setting("logsumexp", "class-aware sets, image class unknown: log-mean-exp of the "
                            "class-conditional logits, or the class-averaged text embedding", choices=MARGINALS)
    batch_size: int = setting(256, "images per forward pass", low=1)
    device: str | None = setting(None, DEVICE_HELP, show_default=BEST_DEVICE)
    cache: bool = setting(True, "do not read or write the image-feature cache")
    figures: bool = setting(True, "skip the PNG figures")
    n_boot: int = setting(1000, N_BOOT_HELP, low=0)
    progress: bool = setting(True, "no progress bars", flags=("--quiet",))

    def check(self) -> None:
        from cifake_lib.clip.prompts import resolve_prompt_sets

        resolve_prompt_sets(self.prompts)  # a bad name fails before data or model load


@dataclass
class ProbeConfig:
    """`cifake probe`: logistic regression (or an MLP) on frozen CLIP image features."""

    model: str = setting(DEFAULT_MODEL, "backbone Hub id or local model folder (CLIP, SigLIP, DINOv2, ...)",
                         metavar="M")
    image_size: int | None = setting(None, "input side in pixels (position embeddings interpolated when it differs "
                                     "from the model's own)", low=8, metavar="PX", show_default="the model's own")
    mlp: bool = setting(False, "a one-hidden-layer MLP probe instead of logistic regression")
    hidden: int = setting(512, "MLP hidden units", low=1)
    batch_size: int = setting(256, "images per forward pass", low=1)
    device: str | None = setting(None, DEVICE_HELP, show_default=BEST_DEVICE)
    cache: bool = setting(True, "do not read or write the image-feature cache")
    figures: bool = setting(True, "skip the PNG figures")
    layers: str = setting("", "the layer-wise probe: 'all' or vision blocks 1..L (e.g. 6,11,12): a linear probe "
                          "on each block's class token, C chosen on validation per block (layers.csv, layers.png)",
                          metavar="all|LIST", show_default="off: the final embedding only")
    # The logistic probe's solver (lbfgs) is deterministic: this seed only changes the MLP.
    train_seed: int = setting(0, "training seed (the MLP's initialisation and early-stopping hold-out)",
                              metavar="N", show_default="the data --seed")
    n_boot: int = setting(1000, N_BOOT_HELP, low=0)
    progress: bool = setting(True, "no progress bars", flags=("--quiet",))


@dataclass
class EvaluateConfig:
    """`cifake evaluate`: a saved detector scored on a split at its own threshold."""

    model: str = setting("", DETECTOR_HELP, metavar="DIR_OR_ID", required=True)
    split: str = setting("test", "split to score", choices=SPLITS)
    batch_size: int = setting(256, "images per forward pass", low=1)
    device: str | None = setting(None, DEVICE_HELP, show_default=BEST_DEVICE)
    n_boot: int = setting(1000, N_BOOT_HELP, low=0)
    external: bool = setting(False, "read --data as an external labelled set, at its own image size, even "
                             "when it has split folders (implied for REAL/ and FAKE/ with no split level, "
                             "a .parquet file or folder, a datasets folder, or hf:REPO other than CIFAKE's)",
                             group=EXTERNAL)
    image_column: str | None = setting(None, "external table: the image column", metavar="NAME",
                                       group=EXTERNAL, show_default="the Image feature")
    label_column: str | None = setting(None, "external table: the label column", metavar="NAME",
                                       group=EXTERNAL, show_default="the ClassLabel feature")
    fake_labels: list[str] = setting(default_factory=list, help="external set: the label names (or label "
                                     "folder names) that mean FAKE, comma-separated; every other name is REAL",
                                     metavar="NAME[,NAME...]", group=EXTERNAL, show_default="REAL and FAKE by name")

    def check(self) -> None:
        if not self.model:
            raise ValueError("model: a run folder or CLIP model is required")


@dataclass
class PredictConfig:
    """`cifake predict`: p_fake for image files."""

    model: str = setting("", DETECTOR_HELP, metavar="DIR_OR_ID", required=True)
    inputs: list[str] = setting(default_factory=list, help="images, or folders of images; - reads paths "
                                "from stdin, one a line", positional=True, nargs="+", metavar="FILE_OR_FOLDER")
    batch_size: int = setting(64, "images per forward pass", low=1)
    device: str | None = setting(None, DEVICE_HELP, show_default=BEST_DEVICE)


__all__ = ["EvaluateConfig", "PredictConfig", "ProbeConfig", "ZeroshotConfig"]
