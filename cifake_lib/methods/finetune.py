"""Contrastive fine-tuning of both CLIP encoders on CIFAKE (FLYP-style), with checkpoints and resume.

The objective (Goyal et al., "Finetune like you pretrain", 2022, adapted to two classes): the
text encoder embeds the class prompts of a prompt set (each label's templates encoded,
normalised, averaged, normalised again: the zero-shot head of `clip.head`), the image
encoder embeds the batch, and

    logits = logit_scale * cos(image, class embedding)        (B, 2): REAL, FAKE
    loss   = cross_entropy(logits, label)                      label 1 = FAKE

Both encoders get gradients: the class embeddings are recomputed from the prompts through the
text encoder at every step. The plain in-batch CLIP loss would treat two images of the same
class as negatives of each other's caption, which is wrong with two classes; it is offered only
with label-aware targets (`loss="clip-label-aware"`: the target of each image spreads over every
caption of its label, and vice versa). The fine-tuned model therefore stays a zero-shot
classifier: `zeroshot.ClipDetector` with the same prompts and head scores it, and that is what the run
exports (detector.json kind "clip", the model in OUT/model/).

Class-aware prompt sets (`{class}` templates) use each image's own CIFAR class when it is known
and the log-mean-exp over classes otherwise (`clip.head.ZeroShotHead`).

LP-FT (Kumar et al. 2022), for CLIP: the "linear head" of a CLIP classifier is its class text
embeddings. With `lp_ft`, a first phase (`lp_steps`, default 10% of the run) trains only the
text side (text encoder, text projection, logit scale) with the image encoder frozen, i.e. it
fits the head on fixed image features; the second phase trains what `train` says. Each phase
has its own warm-up and cosine decay (two runs back to back).

The loop (`train`) reads top to bottom: `build` (model, optimiser, accelerator) and `resume`
(the newest checkpoint's state, RNG and optimiser), then per step: the epoch's order,
`train_step` (forward, loss, backward over the micro-batches, NaN checks, clipping, the update),
log, `evaluate` (validation; export the best model; patience), `checkpoint`. Where the run is
lives in one `training.TrainState`. It runs through Hugging Face Accelerate, so one code path
serves CPU, one GPU and several: every process draws the same seeded permutation and takes its
shard of each batch, and validation is scored shard by shard and gathered, so every process
takes the same decisions. Data stay a uint8 array; a batch is gathered by index, augmented on
uint8 (`perturb.augment_batch`), moved to the device and preprocessed there (`ImagePreprocessor`).

    accelerate launch --multi_gpu --num_processes 2 -m cifake_lib finetune ...        # 2 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m cifake_lib finetune --cpu ...  # 2 CPU processes (gloo)
    torchrun --standalone --nproc_per_node 2 -m cifake_lib finetune ...                # the same with torchrun

(`accelerate launch --cpu --num_processes 2` starts several CPU processes only through MPI;
without an MPI host file it runs one process.) Gradient accumulation is explicit (`no_sync` on
all micro-batches but the last), so the loop can check the loss before the optimizer steps.

Checkpoints (OUT/checkpoints/step-XXXXXXX/, written to a .tmp folder then renamed, newest K
kept): model.safetensors, optimizer.pt and scaler.pt (tensors and plain containers only, read
back with torch.load(weights_only=True)), rng.pt, history.json and state.json (step, epoch,
position in the epoch, seed, best validation AUC, patience, the config). Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifake_lib.clip.head import ZeroShotHead, encode_rows, normalize, p_fake, prompt_index
from cifake_lib.clip.prompts import PromptSet, get_prompt_set
from cifake_lib.core.files import read_json, write_json
from cifake_lib.data.perturb import augment_batch
from cifake_lib.methods.checkpoints import (
    CHECKPOINTS,
    HISTORY_FILE,
    OPTIMIZER_FILE,
    RNG_FILE,
    SCALER_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    TrainingDiverged,
    all_finite,
    export_model,
    latest_checkpoint,
    list_checkpoints,
    load_tensors,
    save_checkpoint,
    set_rng_state,
)
from cifake_lib.methods.training import TrainState, val_scores, warmup_cosine
from cifake_lib.viz.run_figures import (
    training_curves_figure,  # re-exported: notebook 03 imports it here
)

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData, Split

MODEL_DIR = "model"
CURVES_FILE = "training_curves.png"
TRAIN_CHOICES = ("both", "image", "text")
LOSSES = ("flyp", "clip-label-aware")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's own clamp

# Fields that say how to run, not what to train: they may change on --resume.
RUNTIME_FIELDS = frozenset({"out", "resume", "stop_after", "progress", "keep_checkpoints", "cpu",
                            "eval_batch_size", "data"})


class OutOfMemory(RuntimeError):
    """CUDA ran out of memory; the message names the batch size and what to change."""


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def parse_train(value: str) -> str:
    """"both" | "image" | "text", also accepting "text,image", "image+text", "all"."""
    parts = {p.strip().lower() for p in re.split(r"[,+ ]", str(value)) if p.strip()}
    if parts in ({"both"}, {"all"}, {"text", "image"}):
        return "both"
    if parts in ({"image"}, {"text"}):
        return parts.pop()
    raise ValueError(f"train must be both, image, text or text,image; got {value!r}")


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run; saved into every checkpoint and run.json.

    Defaults suit CLIP ViT-B/32 on CIFAKE (AdamW lr 1e-5, weight decay 0.1, cosine with
    warm-up, clipping at 1.0). `batch_size` is the global batch of one forward pass, split
    across processes; an optimizer step sees batch_size * grad_accum images. `max_steps`, when
    set, fixes the run's length (it overrides `epochs`). `stop_after` ends this invocation after
    that many optimizer steps without changing the schedule; `--resume` continues.
    """

    model: str = "openai/clip-vit-base-patch32"
    out: str = ""
    train: str = "both"  # both | image | text: which encoder(s) learn
    prompts: str = "ensemble"  # prompt set name, .json/.toml file, or a zero-shot run folder
    loss: str = "flyp"  # flyp | clip-label-aware
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 128
    grad_accum: int = 1
    lr: float = 1e-5
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int | None = None  # None: 5% of the run (of each phase with lp_ft)
    weight_decay: float = 0.1  # not on biases, norms, embeddings, logit_scale
    beta1: float = 0.9
    beta2: float = 0.98  # CLIP's
    eps: float = 1e-6
    grad_clip: float = 1.0
    freeze_logit_scale: bool = False
    lp_ft: bool = False
    lp_steps: int | None = None  # None: 10% of the run
    flip: bool = True
    jpeg_prob: float = 0.0
    blur_prob: float = 0.0
    mixed_precision: str = "auto"  # auto: bf16 on GPUs that have it, fp16 (+GradScaler) otherwise, no on CPU
    gradient_checkpointing: bool = False
    eval_every: int | None = None  # also evaluate every N steps (always at each epoch end)
    save_every: int = 500  # checkpoint every N steps (always at each epoch end)
    keep_checkpoints: int = 2
    patience: int | None = 3  # evaluations without a better validation AUC before stopping; None: never
    eval_batch_size: int = 256
    log_every: int = 10
    seed: int = 0
    cpu: bool = False
    data: str | None = None  # for the record; the data's identity is checked by fingerprint
    resume: bool = False
    stop_after: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.train = parse_train(self.train)

    def validate(self) -> FinetuneConfig:
        def positive(name: str, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if (v is None and not allow_none) or (v is not None and (not isinstance(v, int) or v < 1)):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

        for name in ("epochs", "batch_size", "grad_accum", "save_every", "keep_checkpoints",
                     "eval_batch_size", "log_every"):
            positive(name)
        for name in ("max_steps", "eval_every", "patience", "stop_after", "lp_steps"):
            positive(name, allow_none=True)
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError("weight_decay must be >= 0 and grad_clip > 0")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                             f"got {self.mixed_precision!r}")
        if self.lp_ft and self.train == "text":
            raise ValueError("lp_ft trains the text side first, then the image encoder: it needs "
                             "train=both or train=image, not train=text")
        for name in ("jpeg_prob", "blur_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with its checkpoint."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FinetuneConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def config_changes(saved: Mapping[str, Any], current: FinetuneConfig) -> list[str]:
    """Human-readable differences between a checkpoint's config and `current` (runtime fields aside)."""
    now = current.identity()
    out = []
    for key in sorted(set(now) | {k for k in saved if k not in RUNTIME_FIELDS}):
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if json.dumps(a) != json.dumps(b):
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


# ---------------------------------------------------------------------------
# Learning-rate schedule (pure)
# ---------------------------------------------------------------------------


def schedule_phases(cfg: FinetuneConfig, total_steps: int) -> list[tuple[int, int, str]]:
    """[(start, end, name)]: one "ft" phase, or "lp" then "ft" with lp_ft."""
    if not cfg.lp_ft:
        return [(0, total_steps, "ft")]
    lp = cfg.lp_steps if cfg.lp_steps is not None else max(1, round(0.1 * total_steps))
    lp = min(lp, total_steps - 1) if total_steps > 1 else total_steps
    return [(0, lp, "lp"), (lp, total_steps, "ft")]


def get_lr(step: int, cfg: FinetuneConfig, total_steps: int) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warm-up, then cosine to lr*min_lr_ratio.

    With lp_ft each phase has its own warm-up and decay. Pure: depends only on its arguments,
    so a resumed run continues the same curve.
    """
    for start, end, _ in schedule_phases(cfg, total_steps):
        if start <= step < end or end == total_steps and step >= end:
            break
    length = max(1, end - start)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(0.05 * length)
    warmup = min(warmup, length - 1) if length > 1 else 0
    i = step - start
    return warmup_cosine(cfg.lr, cfg.min_lr_ratio, warmup=(i + 1) / (warmup + 1) if i < warmup else 1.0,
                         progress=(i - warmup) / max(1, length - 1 - warmup))


def phase_at(step: int, cfg: FinetuneConfig, total_steps: int) -> str:
    for start, end, name in schedule_phases(cfg, total_steps):
        if start <= step < end:
            return name
    return "ft"


# ---------------------------------------------------------------------------
# The model: CLIP as a two-class classifier whose weights come from the text encoder
# ---------------------------------------------------------------------------


def resolve_prompts(spec: str | os.PathLike | PromptSet | Mapping[str, Any]) -> PromptSet:
    """A prompt set by name, file, mapping, or the "prompts" of a run folder's detector.json."""
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        meta_path = path / "detector.json" if path.is_dir() else path if path.name == "detector.json" else None
        if meta_path is not None:
            if not meta_path.is_file():
                raise FileNotFoundError(f"{meta_path}: not found; --prompts wants a prompt set name, a "
                                        ".json/.toml file or a zero-shot run folder")
            meta = read_json(meta_path)
            if not isinstance(meta, dict) or not isinstance(meta.get("prompts"), (dict, str)):
                raise ValueError(f"{meta_path}: no \"prompts\" entry")
            p = meta["prompts"]
            return get_prompt_set(p) if isinstance(p, str) else PromptSet.from_dict(p, source=str(meta_path))
    return get_prompt_set(spec)


class ClassifierOutput(NamedTuple):
    """What `ClipClassifier.forward` returns (float32, with gradients where enabled)."""

    logits: torch.Tensor  # (B, 2): REAL, FAKE
    image_embeds: torch.Tensor  # (B, D) unit vectors
    head: ZeroShotHead  # the label (and per-class) embeddings and the logit scale of this step


class ClipClassifier(nn.Module):
    """CLIPModel + tokenised prompts -> (REAL, FAKE) logits; both towers differentiable.

    The head is `clip.head.ZeroShotHead`, recomputed through the text tower at every call, so the
    text encoder learns. `image_grad` / `text_grad` False run that tower without gradients (the
    phases of LP-FT).
    """

    def __init__(self, clip: nn.Module, tokenizer, prompts: PromptSet):
        super().__init__()
        self.clip = clip
        self.prompts = prompts
        texts, self.rows, self.n_classes = prompt_index(prompts)
        enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        self.register_buffer("input_ids", enc["input_ids"], persistent=False)
        self.register_buffer("attention_mask", enc["attention_mask"], persistent=False)
        self.image_grad = True
        self.text_grad = True

    # Which parameters belong to which side.
    def text_parameters(self) -> list[nn.Parameter]:
        return list(self.clip.text_model.parameters()) + list(self.clip.text_projection.parameters())

    def image_parameters(self) -> list[nn.Parameter]:
        return list(self.clip.vision_model.parameters()) + list(self.clip.visual_projection.parameters())

    def head(self) -> ZeroShotHead:
        """The zero-shot head of the prompts through the current text tower."""
        grad = torch.is_grad_enabled() and self.text_grad and any(
            p.requires_grad for p in self.text_parameters())
        with torch.set_grad_enabled(grad):
            rows = encode_rows(self.clip, self.input_ids, self.attention_mask, self.rows)
        return ZeroShotHead.from_rows(rows, self.n_classes, self.logit_scale())

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled() and self.image_grad and any(
            p.requires_grad for p in self.image_parameters())
        with torch.set_grad_enabled(grad):
            out = self.clip.vision_model(pixel_values=pixel_values)
            return normalize(self.clip.visual_projection(out.pooler_output).float())

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.float().exp()

    def forward(self, pixel_values: torch.Tensor, classes: torch.Tensor | None = None) -> ClassifierOutput:
        head = self.head()
        image_embeds = self.image_embeddings(pixel_values)
        return ClassifierOutput(head.logits(image_embeds, classes, normalized=True), image_embeds, head)


def flyp_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the (REAL, FAKE) logits against the label (1 = FAKE)."""
    return F.cross_entropy(logits.float(), labels)


def label_aware_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, labels: torch.Tensor,
                          logit_scale: torch.Tensor) -> torch.Tensor:
    """The symmetric in-batch CLIP loss with targets spread over every same-label pair.

    image_emb, text_emb: (B, D) unit vectors, text_emb[i] the class embedding of image i's
    label. Row i's target is uniform over the captions j with labels[j] == labels[i] (the
    plain CLIP loss would put it all on j == i and push same-class captions away).
    """
    logits = logit_scale * image_emb @ text_emb.T  # (B, B)
    same = (labels[:, None] == labels[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)  # symmetric: same-label rows have equal counts
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def label_text_embeddings(head: ZeroShotHead, labels: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
    """(B, D): each image's label embedding, its own class's where the set is class-aware and the class known."""
    text = head.weights[labels]
    if head.class_weights is not None and classes is not None:
        known = (classes >= 0) & (classes < head.n_classes)
        own = head.class_weights[labels, classes.clamp(0, head.n_classes - 1)]
        text = torch.where(known[:, None], own, text)
    return text


def compute_loss(cfg: FinetuneConfig, out: ClassifierOutput, labels: torch.Tensor,
                 classes: torch.Tensor | None) -> torch.Tensor:
    """The training objective named by `cfg.loss` for one batch's `ClipClassifier` output."""
    if cfg.loss == "flyp":
        return flyp_loss(out.logits, labels)
    text = label_text_embeddings(out.head, labels, classes)
    return label_aware_clip_loss(out.image_embeds, text, labels, torch.as_tensor(out.head.logit_scale))


def param_groups(model: ClipClassifier, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices only; none on biases, norms, embeddings, logit_scale."""
    decay, no_decay = [], []
    for name, p in model.clip.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or "norm" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def set_trainable(model: ClipClassifier, cfg: FinetuneConfig) -> None:
    """requires_grad per --train / --freeze-logit-scale (LP-FT switches sides at run time)."""
    for p in model.text_parameters():
        p.requires_grad_(cfg.train in ("both", "text") or cfg.lp_ft)
    for p in model.image_parameters():
        p.requires_grad_(cfg.train in ("both", "image"))
    model.clip.logit_scale.requires_grad_(not cfg.freeze_logit_scale)


# ---------------------------------------------------------------------------
# Data: index batches, augment on uint8, preprocess on the device
# ---------------------------------------------------------------------------


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch `epoch`: a function of (seed, epoch) only, so resume needs no state."""
    return np.random.default_rng([seed, epoch, 0xC1FA]).permutation(n)


def data_fingerprint(train: Split, val: Split | None) -> str:
    """A hash of the train/val ids, labels and ~1000 of their images: a resumed run must see the same data."""
    h = hashlib.sha256()
    for split in (train, val):
        if split is None:
            h.update(b"none")
            continue
        h.update(str(len(split)).encode())
        h.update("\n".join(map(str, split.ids)).encode())
        h.update(np.ascontiguousarray(np.asarray(split.labels, dtype=np.int64)).tobytes())
        h.update(np.ascontiguousarray(split.images[::max(1, len(split) // 1000)]).tobytes())
    return h.hexdigest()[:16]


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """auto: bf16 on GPUs with native bf16 (Ampere+), fp16 on older ones (a T4), no elsewhere."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return "bf16" if major >= 8 else "fp16"
    return "no"


def make_accelerator(cfg: FinetuneConfig):
    """An Accelerator for this config. In a single process (a notebook, tests) the global
    AcceleratorState is reset first, so runs with other precision/device settings can follow."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not distributed:
        AcceleratorState._reset_state(reset_partial_state=True)
    cpu = cfg.cpu or not torch.cuda.is_available()
    device = torch.device("cpu") if cpu else torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    mp = resolve_mixed_precision(cfg.mixed_precision, device)
    # The LP phase of LP-FT leaves the image tower without gradients: DDP must be told.
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=cfg.lp_ft)]
    return Accelerator(mixed_precision=mp, cpu=cpu, kwargs_handlers=kwargs)


def _shard(idx: np.ndarray, rank: int, world: int) -> np.ndarray:
    return idx[rank::world]


# ---------------------------------------------------------------------------
# Evaluation during training
# ---------------------------------------------------------------------------


@torch.no_grad()
def predict_logits(model: ClipClassifier, preprocess, images: np.ndarray, classes: np.ndarray | None,
                   batch_size: int, device: torch.device, autocast=contextlib.nullcontext) -> np.ndarray:
    """(N, 2) float32 logits of uint8 images with the in-memory model (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        out = []
        with autocast():
            head = model.head()
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
                c = None if classes is None else torch.as_tensor(classes[start:start + batch_size],
                                                                 dtype=torch.long, device=device)
                out.append(head.logits(model.image_embeddings(preprocess(x)), c, normalized=True).float())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, 2), dtype=np.float32)
    return torch.cat(out).cpu().numpy()


def validation_scores(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """val_loss (cross-entropy), val_accuracy (argmax) and val_auc (of p_fake) of (N, 2) logits."""
    labels = np.asarray(labels, dtype=np.int64)
    loss = float(F.cross_entropy(torch.from_numpy(logits.astype(np.float64)), torch.from_numpy(labels)))
    return {"val_loss": loss, **val_scores(labels, p_fake(logits), logits.argmax(axis=1) == 1)}


def _evaluate(accelerator, model: ClipClassifier, preprocess, split: Split, batch_size: int) -> dict[str, float]:
    """Validation scores, each process scoring its shard; gathered so every process decides alike."""
    rank, world = accelerator.process_index, accelerator.num_processes
    n = len(split)
    per = math.ceil(n / world)
    idx = np.arange(rank * per, min(n, (rank + 1) * per))
    logits = predict_logits(model, preprocess, split.images[idx], np.asarray(split.classes)[idx], batch_size,
                            accelerator.device, accelerator.autocast)
    if world > 1:
        padded = np.zeros((per, 2), dtype=np.float32)
        padded[:len(logits)] = logits
        gathered = accelerator.gather(torch.from_numpy(padded).to(accelerator.device)).cpu().numpy()
        logits = gathered[:n]
    return validation_scores(np.asarray(split.labels), logits)


# ---------------------------------------------------------------------------
# Training: build (and resume), one optimisation step, evaluate, checkpoint; `train` runs them
# ---------------------------------------------------------------------------


@dataclass
class TrainOutcome:
    out: Path
    status: str  # "finished" | "early_stopped" | "stopped" (by stop_after; resume to continue)
    step: int
    total_steps: int
    best_step: int | None
    best_val_auc: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0


def _check_split(split: Any, name: str) -> None:
    images = getattr(split, "images", None)
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"{name}: images must be a uint8 (N, H, W, 3) array")


def _oom_message(cfg: FinetuneConfig, world: int, where: str) -> str:
    per = math.ceil(cfg.batch_size / world)
    return (f"CUDA out of memory during {where} with --batch-size {cfg.batch_size} ({per} images per "
            f"process per forward pass, --grad-accum {cfg.grad_accum}). Lower --batch-size and raise "
            f"--grad-accum to keep the effective batch (e.g. --batch-size {max(1, cfg.batch_size // 2)} "
            f"--grad-accum {cfg.grad_accum * 2}), or add --gradient-checkpointing"
            + (f"; for evaluation lower --eval-batch-size ({cfg.eval_batch_size})" if where == "evaluation" else ""))


_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@dataclass
class Setup:
    """What a run is built from: its config, data, model, optimiser and accelerator."""

    cfg: FinetuneConfig
    out: Path
    accelerator: Any
    clip: nn.Module
    processor: Any
    model: ClipClassifier
    ddp_model: nn.Module
    optimizer: Any
    trainable: list[nn.Parameter]
    preprocess: Any
    prompts: PromptSet
    train: Split
    val: Split | None
    steps_per_epoch: int
    total_steps: int
    fingerprint: str

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def scaler(self) -> Any:
        return getattr(self.accelerator, "scaler", None)

    def snapshot(self, state: TrainState) -> dict[str, Any]:
        """state.json of a checkpoint: the state, the run's length and what a resume must match."""
        return {**state.to_json(), "seed": self.cfg.seed, "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch, "config": self.cfg.identity(),
                "data_fingerprint": self.fingerprint, "prompts": self.prompts.to_dict(),
                "world_size": self.world, "mixed_precision": self.accelerator.mixed_precision}

    def export(self) -> None:
        """The current model to OUT/model/ (main process), every process waiting for it."""
        if self.main:
            export_model(self.clip, self.processor, self.out / MODEL_DIR)
        self.accelerator.wait_for_everyone()


def _run_length(cfg: FinetuneConfig, n: int, world: int) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps) of a train split of n images."""
    if cfg.batch_size < world:
        raise ValueError(f"--batch-size {cfg.batch_size} is smaller than the {world} processes")
    steps_per_epoch = n // (cfg.batch_size * cfg.grad_accum)
    if steps_per_epoch < 1:
        raise ValueError(f"the train split has {n} images, fewer than one optimizer step's "
                         f"batch_size x grad_accum = {cfg.batch_size * cfg.grad_accum}")
    return steps_per_epoch, cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch


def checkpoint_to_resume(cfg: FinetuneConfig, fingerprint: str, prompts: PromptSet) -> Path | None:
    """The newest checkpoint of OUT when resuming (refused when the config or data changed), else None."""
    out = Path(cfg.out)
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not cfg.resume:
        raise ValueError(f"{out}: holds checkpoints of an earlier run ({ckpt.name}); pass --resume to "
                         "continue it, or choose another --out")
    if ckpt is None:
        if cfg.resume and int(os.environ.get("RANK", "0")) == 0:
            print(f"finetune: nothing to resume in {out / CHECKPOINTS}; starting from {cfg.model}",
                  file=sys.stderr, flush=True)
        return None
    saved = read_json(ckpt / STATE_FILE)
    changes = config_changes(saved["config"], cfg)
    if saved.get("data_fingerprint") != fingerprint:
        changes.append("data: the train/validation images differ (source, subset, seed or val fraction)")
    if saved.get("prompts") != prompts.to_dict():
        changes.append(f"prompts: the templates of {cfg.prompts!r} changed")
    if changes:
        raise ValueError(f"--resume refused: {ckpt} was written with another config:\n  " + "\n  ".join(changes)
                         + "\nOnly " + ", ".join(sorted(RUNTIME_FIELDS)) + " may change on resume.")
    return ckpt


def _load_clip(cfg: FinetuneConfig):
    from transformers import CLIPModel, CLIPProcessor

    processor = CLIPProcessor.from_pretrained(cfg.model)
    clip = CLIPModel.from_pretrained(cfg.model, dtype=torch.float32)  # fp32 master weights
    if cfg.gradient_checkpointing:
        # transformers >= 5.2x renames it; Colab's 5.15 has only the old name.
        if hasattr(clip, "activation_checkpointing_enable"):
            clip.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return clip, processor


def build(data: CifakeData, cfg: FinetuneConfig) -> tuple[Setup, Path | None]:
    """Check the config and data, load CLIP, make the optimiser; also the checkpoint to resume from."""
    from cifake_lib.data.preprocess import ImagePreprocessor

    cfg.validate()
    if not cfg.out:
        raise ValueError("FinetuneConfig.out: the run folder is required")
    _check_split(data.train, "train")
    val = data.val if data.val is not None and len(data.val) else None
    if val is not None:
        _check_split(val, "val")
    prompts = resolve_prompts(cfg.prompts)
    accelerator = make_accelerator(cfg)
    steps_per_epoch, total_steps = _run_length(cfg, len(data.train), accelerator.num_processes)
    fingerprint = data_fingerprint(data.train, val)
    ckpt = checkpoint_to_resume(cfg, fingerprint, prompts)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    clip, processor = _load_clip(cfg)
    model = ClipClassifier(clip, processor.tokenizer, prompts)
    set_trainable(model, cfg)
    model.to(accelerator.device).train()
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if ckpt is not None:  # before prepare: the weights and the optimiser as they were
        from safetensors.torch import load_file

        clip.load_state_dict(load_file(str(ckpt / WEIGHTS_FILE)), strict=True)
        optimizer.load_state_dict(load_tensors(ckpt / OPTIMIZER_FILE))
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    setup = Setup(cfg=cfg, out=Path(cfg.out), accelerator=accelerator, clip=clip, processor=processor,
                  model=model, ddp_model=ddp_model, optimizer=optimizer,
                  trainable=[p for p in model.parameters() if p.requires_grad],
                  preprocess=ImagePreprocessor.from_processor(processor), prompts=prompts, train=data.train,
                  val=val, steps_per_epoch=steps_per_epoch, total_steps=total_steps, fingerprint=fingerprint)
    return setup, ckpt


def resume(setup: Setup, ckpt: Path | None) -> TrainState:
    """The state to start from: a fresh one, or the checkpoint's (gradient scaler, RNG, state, history)."""
    if ckpt is None:
        return TrainState()
    if setup.scaler is not None and (ckpt / SCALER_FILE).is_file():
        setup.scaler.load_state_dict(load_tensors(ckpt / SCALER_FILE))
    set_rng_state(load_tensors(ckpt / RNG_FILE))
    return TrainState.from_json(read_json(ckpt / STATE_FILE), read_json(ckpt / HISTORY_FILE))


def _last_good(setup: Setup) -> str:
    return str(latest_checkpoint(setup.out) or "none yet")


@dataclass
class StepStats:
    """What one optimisation step reports for the log."""

    phase: str
    lr: float
    loss: torch.Tensor  # mean over micro-batches and processes
    correct: int  # over every process
    seen: int  # images over every process
    grad_norm: float
    seconds: float


def _batch(setup: Setup, state: TrainState, perm: np.ndarray, micro: int):
    """Micro-batch `micro` of the current step: this process's shard, augmented on uint8, on the device."""
    cfg, rank, device = setup.cfg, setup.accelerator.process_index, setup.accelerator.device
    start = (state.position * cfg.grad_accum + micro) * cfg.batch_size
    idx = _shard(perm[start:start + cfg.batch_size], rank, setup.world)
    rng = np.random.default_rng([cfg.seed, state.epoch, state.position, micro, rank])
    x = augment_batch(setup.train.images[idx], rng, flip=cfg.flip, jpeg_prob=cfg.jpeg_prob,
                      blur_prob=cfg.blur_prob)
    x = torch.from_numpy(x).to(device, non_blocking=True)
    y = torch.from_numpy(np.asarray(setup.train.labels, dtype=np.int64)[idx]).to(device)
    c = torch.from_numpy(np.asarray(setup.train.classes, dtype=np.int64)[idx]).to(device)
    return x, y, c


def train_step(setup: Setup, state: TrainState, perm: np.ndarray) -> StepStats:
    """One optimizer step: forward/backward over grad_accum micro-batches (gradients synchronised
    on the last one only), checks, clipping, the update, the logit-scale clamp."""
    cfg, accelerator, model = setup.cfg, setup.accelerator, setup.model
    t0 = time.perf_counter()
    # LP-FT: the LP phase trains the text side only (the head); then --train decides.
    phase = phase_at(state.step, cfg, setup.total_steps)
    model.image_grad = phase != "lp"
    model.text_grad = phase == "lp" or cfg.train != "image"
    lr = get_lr(state.step, cfg, setup.total_steps)
    for group in setup.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=accelerator.device)
    correct = torch.zeros((), device=accelerator.device, dtype=torch.long)
    seen = 0
    try:
        for micro in range(cfg.grad_accum):
            x, y, c = _batch(setup, state, perm, micro)
            sync = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(setup.ddp_model):
                out = setup.ddp_model(setup.preprocess(x), c)
                loss = compute_loss(cfg, out, y, c)
                accelerator.backward(loss / cfg.grad_accum)
            loss_sum += loss.detach()
            correct += (out.logits.detach().argmax(dim=1) == y).sum()
            seen += len(y)
        # Check before stepping: a NaN loss must not reach the weights.
        loss_mean = accelerator.reduce(loss_sum / cfg.grad_accum, "mean")
        if not torch.isfinite(loss_mean):
            raise TrainingDiverged(f"the loss is {loss_mean.item()} at step {state.step} (epoch {state.epoch}); "
                                   f"stopped. The last good checkpoint is {_last_good(setup)}. "
                                   "Try a lower --lr or --mixed-precision no/bf16.")
        grad_norm = accelerator.clip_grad_norm_(setup.trainable, cfg.grad_clip)
        if setup.scaler is None and not torch.isfinite(grad_norm):
            raise TrainingDiverged(f"the gradient norm is {grad_norm.item()} at step {state.step}; stopped. "
                                   f"The last good checkpoint is {_last_good(setup)}.")
        setup.optimizer.step()
        setup.optimizer.zero_grad(set_to_none=True)
    except _OOM:
        raise OutOfMemory(_oom_message(cfg, setup.world, "training")) from None
    if not cfg.freeze_logit_scale:
        with torch.no_grad():
            setup.clip.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
    return StepStats(phase=phase, lr=lr, loss=loss_mean, correct=int(accelerator.reduce(correct, "sum")),
                     seen=seen * setup.world, grad_norm=float(grad_norm), seconds=time.perf_counter() - t0)


def evaluate(setup: Setup, state: TrainState) -> None:
    """Score validation; export the model when its AUC is the best so far; stop when out of patience."""
    cfg = setup.cfg
    try:
        scores = _evaluate(setup.accelerator, setup.model, setup.preprocess, setup.val, cfg.eval_batch_size)
    except _OOM:
        raise OutOfMemory(_oom_message(cfg, setup.world, "evaluation")) from None
    improved = state.observe(scores["val_auc"])
    if improved:
        if not all_finite(setup.trainable):
            raise TrainingDiverged(f"the weights hold NaN/inf at step {state.step}")
        setup.export()
    state.history.append({"kind": "val", "step": state.step, "epoch": state.step / setup.steps_per_epoch,
                          **scores, "best": improved})
    if cfg.patience is not None and state.patience >= cfg.patience:
        state.status = "early_stopped"


def checkpoint(setup: Setup, state: TrainState) -> None:
    """OUT/checkpoints/step-XXXXXXX/ (main process), every process waiting for it."""
    if setup.main:
        save_checkpoint(setup.out, clip=setup.clip, optimizer=setup.optimizer, scaler=setup.scaler,
                        state=setup.snapshot(state), history=state.history, keep=setup.cfg.keep_checkpoints)
    setup.accelerator.wait_for_everyone()


@dataclass
class _Meter:
    """Throughput: images and seconds since the last log record, and over the whole invocation."""

    t_window: float = field(default_factory=time.perf_counter)
    window_images: int = 0
    train_seconds: float = 0.0
    train_images: int = 0

    def add(self, stats: StepStats) -> None:
        self.window_images += stats.seen
        self.train_seconds += stats.seconds
        self.train_images += stats.seen

    def rate(self) -> float:
        """Images per second since the last call (which starts a new window)."""
        now = time.perf_counter()
        rate = self.window_images / max(1e-9, now - self.t_window)
        self.t_window, self.window_images = now, 0
        return rate


def log_record(setup: Setup, state: TrainState, stats: StepStats, images_per_second: float) -> dict[str, Any]:
    """The train record of the log window that ends at this step (means over its steps)."""
    w = state.window
    record = {"kind": "train", "step": state.step, "epoch": state.step / setup.steps_per_epoch,
              "phase": stats.phase, "loss": w["loss"] / w["steps"],
              "train_accuracy": w["correct"] / max(1, w["seen"]), "lr": stats.lr, "grad_norm": stats.grad_norm,
              "logit_scale": float(setup.model.logit_scale().detach()), "images_per_second": images_per_second}
    state.history.append(record)
    state.reset_window()
    return record


def _write_history(setup: Setup, state: TrainState) -> None:
    if setup.main:
        write_json(setup.out / HISTORY_FILE, {"total_steps": setup.total_steps,
                                              "steps_per_epoch": setup.steps_per_epoch,
                                              "records": state.history})


def train(data: CifakeData, cfg: FinetuneConfig) -> TrainOutcome:
    """Fine-tune (or resume) per `cfg`; the best model by validation AUC goes to OUT/model/.

    Without a validation split the last model is exported and there is no early stopping.
    Raises TrainingDiverged on a NaN/infinite loss or gradient (the last good checkpoint stays),
    OutOfMemory on CUDA OOM, ValueError on a bad config or a refused resume.
    """
    from tqdm.auto import tqdm

    # build the model and optimiser; resume from the newest checkpoint when asked
    setup, ckpt = build(data, cfg)
    state = resume(setup, ckpt)
    t_start = time.perf_counter()
    if setup.main:
        setup.out.mkdir(parents=True, exist_ok=True)
        write_json(setup.out / "finetune_config.json", cfg.to_dict())
    bar = tqdm(total=setup.total_steps, initial=state.step, desc=f"finetune ({cfg.train})", unit="step",
               file=sys.stderr, dynamic_ncols=True, disable=not (cfg.progress and setup.main))
    meter, steps_this_run, written, perm_epoch, perm = _Meter(), 0, len(state.history), -1, None

    while state.status == "running" and state.step < setup.total_steps:
        # the epoch's order: a function of (seed, epoch) only, so a resumed run needs no saved order
        if perm_epoch != state.epoch:
            perm_epoch, perm = state.epoch, epoch_permutation(len(data.train), cfg.seed, state.epoch)
        # one optimisation step
        stats = train_step(setup, state, perm)
        epoch_end = state.advance(setup.steps_per_epoch)
        steps_this_run += 1
        meter.add(stats)
        for key, value in (("loss", float(stats.loss)), ("correct", stats.correct), ("seen", stats.seen),
                           ("steps", 1)):
            state.window[key] += value
        # log every log_every steps, at each epoch end and at the last step
        last = state.step >= setup.total_steps
        if state.step % cfg.log_every == 0 or epoch_end or last:
            record = log_record(setup, state, stats, meter.rate())
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{stats.lr:.2e}",
                            img_s=f"{record['images_per_second']:.0f}", refresh=False)
        bar.update(1)
        # evaluate on validation at each epoch end, every eval_every steps and at the last step
        if setup.val is not None and (epoch_end or last or (cfg.eval_every and state.step % cfg.eval_every == 0)):
            evaluate(setup, state)
        if last and state.status == "running":
            state.status = "finished"
        # checkpoint at each epoch end, every save_every steps, and whenever this invocation ends
        stopping = cfg.stop_after is not None and steps_this_run >= cfg.stop_after
        if state.status != "running" or epoch_end or stopping or state.step % cfg.save_every == 0:
            if state.status != "running" and setup.val is None:
                setup.export()  # no validation: the last model
            checkpoint(setup, state)
        if len(state.history) != written:  # appended this step: rewrite the file (atomically)
            _write_history(setup, state)
            written = len(state.history)
        if stopping and state.status == "running":
            state.status = "stopped"
    bar.close()

    # finish: the exported model, the history and the outcome
    if state.status == "running":  # resumed a run that had already finished its steps
        state.status = "finished"
    if state.status != "stopped" and not (setup.out / MODEL_DIR / "config.json").is_file():
        setup.export()  # e.g. no evaluation ever improved on NaN: keep the last model
    _write_history(setup, state)
    setup.accelerator.end_training()
    return TrainOutcome(out=setup.out, status=state.status, step=state.step, total_steps=setup.total_steps,
                        best_step=state.best_step, best_val_auc=state.best, history=state.history,
                        seconds=time.perf_counter() - t_start,
                        images_per_second=meter.train_images / max(1e-9, meter.train_seconds))


# ---------------------------------------------------------------------------
# The whole stage: train, evaluate the best model, write the run folder
# ---------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    outcome: TrainOutcome
    metrics: dict[str, Any] | None  # test metrics (None when stopped by stop_after)
    out: Path


def load_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of OUT/history.json (or of a history dict/list)."""
    h = read_json(Path(path) / HISTORY_FILE if Path(path).is_dir() else path)
    return h["records"] if isinstance(h, dict) else h


def evaluate_run(data: CifakeData, cfg: FinetuneConfig, outcome: TrainOutcome, *, seconds: float,
                 args: Mapping[str, Any] | None = None, device: str | torch.device | None = None) -> dict[str, Any]:
    """Score the exported best model on val (threshold) and test with `ClipDetector`; write the run folder."""
    from cifake_lib.evaluation.runs import write_run
    from cifake_lib.methods.zeroshot import ClipDetector
    from cifake_lib.viz.plots import save_figure

    out = Path(cfg.out)
    prompts = resolve_prompts(cfg.prompts)
    if device is None and cfg.cpu:
        device = "cpu"
    det = ClipDetector.from_pretrained(out / MODEL_DIR, prompts, device=device,
                                       detector=f"finetune:{cfg.train}", model_ref=MODEL_DIR)
    val = data.val if data.val is not None and len(data.val) else None
    bs = cfg.eval_batch_size
    p_test = det.predict_proba(data.test.images, bs, classes=data.test.classes)
    p_val = det.predict_proba(val.images, bs, classes=val.classes) if val is not None else None
    meta = {**det.to_json(MODEL_DIR), "prompt_set": prompts.name, "base_model": cfg.model, "train": cfg.train,
            "loss": cfg.loss, "best_step": outcome.best_step, "best_val_auc": outcome.best_val_auc,
            "steps": outcome.step, "total_steps": outcome.total_steps, "status": outcome.status}
    meta.pop("threshold", None)  # chosen on validation by write_run
    metrics = write_run(out, test=data.test, p_test=p_test, val=val, p_val=p_val, detector=meta,
                        model=cfg.model, data=data.source, seed=cfg.seed,
                        args={**(args or {}), "config": cfg.to_dict()}, seconds=seconds)
    if outcome.history:
        save_figure(training_curves_figure(outcome.history, title=f"finetune:{cfg.train}"), out / CURVES_FILE)
    return metrics


def finetune(data: CifakeData, cfg: FinetuneConfig, *, args: Mapping[str, Any] | None = None) -> FinetuneResult:
    """The stage: train (or resume), then evaluate the best model and write the run folder.

    When `cfg.stop_after` ends the run early, no metrics are written (status "stopped"): run
    again with `resume=True` to continue.
    """
    t0 = time.perf_counter()
    outcome = train(data, cfg)
    if outcome.status == "stopped":
        return FinetuneResult(outcome=outcome, metrics=None, out=outcome.out)
    if int(os.environ.get("RANK", "0")) != 0:  # under `accelerate launch` only the main process reports
        return FinetuneResult(outcome=outcome, metrics=None, out=outcome.out)
    metrics = evaluate_run(data, cfg, outcome, seconds=time.perf_counter() - t0, args=args)
    return FinetuneResult(outcome=outcome, metrics=metrics, out=outcome.out)


__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "TrainOutcome",
    "ClipClassifier",
    "TrainingDiverged",
    "OutOfMemory",
    "finetune",
    "train",
    "evaluate_run",
    "get_lr",
    "flyp_loss",
    "label_aware_clip_loss",
    "param_groups",
    "parse_train",
    "resolve_prompts",
    "epoch_permutation",
    "latest_checkpoint",
    "list_checkpoints",
    "save_checkpoint",
    "export_model",
    "load_history",
    "training_curves_figure",
    "config_changes",
]
