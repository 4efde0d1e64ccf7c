"""Contrastive fine-tuning of both CLIP encoders on CIFAKE (FLYP-style), with checkpoints and resume.

The objective (Goyal et al., "Finetune like you pretrain", 2022, adapted to two classes): the
text encoder embeds the class prompts of a prompt set (each label's templates encoded,
normalised, averaged, normalised again, exactly as the zero-shot classifier does), the image
encoder embeds the batch, and

    logits = logit_scale * cos(image, class embedding)        (B, 2): REAL, FAKE
    loss   = cross_entropy(logits, label)                      label 1 = FAKE

Both encoders get gradients: the class embeddings are recomputed from the prompts through the
text encoder at every step. The plain in-batch CLIP loss would treat two images of the same
class as negatives of each other's caption, which is wrong with two classes; it is offered only
with label-aware targets (`loss="clip-label-aware"`: the target of each image spreads over every
caption of its label, and vice versa). The fine-tuned model therefore stays a zero-shot
classifier: `zeroshot.ClipDetector` with the same prompts scores it, and that is what the run
exports (detector.json kind "clip", the model in OUT/model/).

Class-aware prompt sets (`{class}` templates) use each image's own CIFAR class when it is known
and the log-mean-exp over classes otherwise, as `zeroshot.ZeroShotHead` does.

LP-FT (Kumar et al. 2022), for CLIP: the "linear head" of a CLIP classifier is its class text
embeddings. With `lp_ft`, a first phase (`lp_steps`, default 10% of the run) trains only the
text side (text encoder, text projection, logit scale) with the image encoder frozen, i.e. it
fits the head on fixed image features; the second phase trains what `train` says. Each phase
has its own warm-up and cosine decay (two runs back to back).

The loop (`train`) reads top to bottom: evaluate, checkpoint, forward, backward, clip, step,
log. It runs through Hugging Face Accelerate, so one code path serves CPU, one GPU and several:
every process draws the same seeded permutation and takes its shard of each batch, and
validation is scored shard by shard and gathered, so every process takes the same decisions.
Data stay a uint8 array; a batch is gathered by index, augmented on uint8
(`perturb.augment_batch`), moved to the device and preprocessed there (`ImagePreprocessor`).

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
import hashlib
import math
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifake_lib.clip.models import check_model_source
from cifake_lib.clip.prompts import PromptSet, get_prompt_set
from cifake_lib.core.errors import out_of_memory_kind
from cifake_lib.core.files import read_json, write_json
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
from cifake_lib.methods.finetune_config import (  # noqa: F401 (re-exported: the settings live there)
    LOSSES,
    MIXED_PRECISION,
    RUNTIME_FIELDS,
    TRAIN_CHOICES,
    FinetuneConfig,
    config_changes,
    parse_train,
)
from cifake_lib.methods.speed import compile_towers, make_adamw

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cifake_lib.data.load import CifakeData, Split

MODEL_DIR = "model"
CURVES_FILE = "training_curves.png"
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's own clamp


class OutOfMemory(RuntimeError):
    """CUDA or CPU memory ran out; the message names the batch size and what to change."""


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
    if i < warmup:
        return cfg.lr * (i + 1) / (warmup + 1)
    progress = min(1.0, (i - warmup) / max(1, length - 1 - warmup))
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


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


def _prompt_groups(prompts: PromptSet) -> tuple[list[str], list[list[int]], int]:
    """Unique texts, and for each classifier row the indices of its texts.

    Rows: REAL, FAKE (all templates; every class for class-aware sets), then for class-aware
    sets REAL/class 0..C-1 and FAKE/class 0..C-1 (the layout of zeroshot.build_head).
    """
    groups = [prompts.texts(0), prompts.texts(1)]
    n_classes = len(prompts.class_names) if prompts.class_aware else 0
    for label in (0, 1):
        for c in range(n_classes):
            groups.append(prompts.texts(label, c))
    unique = list(dict.fromkeys(t for g in groups for t in g))
    index = {t: i for i, t in enumerate(unique)}
    return unique, [[index[t] for t in g] for g in groups], n_classes


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class ClipClassifier(nn.Module):
    """CLIPModel + tokenised prompts -> (REAL, FAKE) logits; both towers differentiable.

    `forward(pixel_values, classes)` returns (logits (B, 2), image embeddings (B, D, unit),
    label weights (2, D), per-class weights (2, C, D) or None, logit scale), all float32.
    `image_grad` / `text_grad` False run that tower without gradients (the phases of LP-FT).
    """

    def __init__(self, clip: nn.Module, tokenizer, prompts: PromptSet):
        super().__init__()
        self.clip = clip
        self.prompts = prompts
        texts, groups, self.n_classes = _prompt_groups(prompts)
        enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        averaging = torch.zeros(len(groups), len(texts))
        for row, idx in enumerate(groups):
            averaging[row, idx] = 1.0 / len(idx)
        self.register_buffer("input_ids", enc["input_ids"], persistent=False)
        self.register_buffer("attention_mask", enc["attention_mask"], persistent=False)
        self.register_buffer("averaging", averaging, persistent=False)
        self.image_grad = True
        self.text_grad = True

    # Which parameters belong to which side.
    def text_parameters(self) -> list[nn.Parameter]:
        return list(self.clip.text_model.parameters()) + list(self.clip.text_projection.parameters())

    def image_parameters(self) -> list[nn.Parameter]:
        return list(self.clip.vision_model.parameters()) + list(self.clip.visual_projection.parameters())

    def label_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(2, D) label embeddings and (2, C, D) per-class ones: normalise, average, normalise."""
        grad = torch.is_grad_enabled() and self.text_grad and any(
            p.requires_grad for p in self.text_parameters())
        with torch.set_grad_enabled(grad):
            out = self.clip.text_model(input_ids=self.input_ids, attention_mask=self.attention_mask)
            emb = _normalize(self.clip.text_projection(out.pooler_output).float())
            rows = _normalize(self.averaging @ emb)
        weights = rows[:2]
        per_class = rows[2:].reshape(2, self.n_classes, -1) if self.n_classes else None
        return weights, per_class

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled() and self.image_grad and any(
            p.requires_grad for p in self.image_parameters())
        with torch.set_grad_enabled(grad):
            out = self.clip.vision_model(pixel_values=pixel_values)
            return _normalize(self.clip.visual_projection(out.pooler_output).float())

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.float().exp()

    def logits_from(self, image_emb: torch.Tensor, weights: torch.Tensor, per_class: torch.Tensor | None,
                    classes: torch.Tensor | None) -> torch.Tensor:
        """zeroshot.ZeroShotHead.logits in torch: the image's own class when known, else log-mean-exp."""
        scale = self.logit_scale()
        if per_class is None:
            return scale * image_emb @ weights.T
        all_classes = scale * torch.einsum("bd,lcd->blc", image_emb, per_class)  # (B, 2, C)
        out = torch.logsumexp(all_classes, dim=2) - math.log(self.n_classes)
        if classes is not None:
            known = (classes >= 0) & (classes < self.n_classes)
            own = all_classes.gather(2, classes.clamp(0, self.n_classes - 1).view(-1, 1, 1).expand(-1, 2, 1))
            out = torch.where(known[:, None], own[..., 0], out)
        return out

    def forward(self, pixel_values: torch.Tensor, classes: torch.Tensor | None = None):
        weights, per_class = self.label_weights()
        image_emb = self.image_embeddings(pixel_values)
        logits = self.logits_from(image_emb, weights, per_class, classes)
        return logits, image_emb, weights, per_class, self.logit_scale()


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


def _loss(cfg: FinetuneConfig, model: ClipClassifier, out, labels: torch.Tensor,
          classes: torch.Tensor | None) -> torch.Tensor:
    logits, image_emb, weights, per_class, scale = out
    if cfg.loss == "flyp":
        return flyp_loss(logits, labels)
    text = weights[labels]
    if per_class is not None and classes is not None:
        known = (classes >= 0) & (classes < model.n_classes)
        own = per_class[labels, classes.clamp(0, model.n_classes - 1)]
        text = torch.where(known[:, None], own, text)
    return label_aware_clip_loss(image_emb, text, labels, scale)


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
            weights, per_class = model.label_weights()
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
                c = None if classes is None else torch.as_tensor(classes[start:start + batch_size],
                                                                 dtype=torch.long, device=device)
                emb = model.image_embeddings(preprocess(x))
                out.append(model.logits_from(emb, weights, per_class, c).float())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, 2), dtype=np.float32)
    return torch.cat(out).cpu().numpy()


def _p_fake(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * (z[:, 1] - z[:, 0])))


def _val_scores(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, dtype=np.int64)
    loss = float(F.cross_entropy(torch.from_numpy(logits.astype(np.float64)), torch.from_numpy(labels)))
    acc = float((logits.argmax(axis=1) == labels).mean())
    auc = float(roc_auc_score(labels, _p_fake(logits))) if len(np.unique(labels)) == 2 else float("nan")
    return {"val_loss": loss, "val_accuracy": acc, "val_auc": auc}


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
    return _val_scores(np.asarray(split.labels), logits)


# ---------------------------------------------------------------------------
# Training
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


def _oom_message(cfg: FinetuneConfig, world: int, where: str, kind: str = "CUDA") -> str:
    per = math.ceil(cfg.batch_size / world)
    return (f"{kind} out of memory during {where} with --batch-size {cfg.batch_size} ({per} images per "
            f"process per forward pass, --grad-accum {cfg.grad_accum}). Lower --batch-size and raise "
            f"--grad-accum to keep the effective batch (e.g. --batch-size {max(1, cfg.batch_size // 2)} "
            f"--grad-accum {cfg.grad_accum * 2}), or add --gradient-checkpointing"
            + (f"; for evaluation lower --eval-batch-size ({cfg.eval_batch_size})" if where == "evaluation" else ""))


_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # CUDA's; CPU's: see out_of_memory_kind


def _write_history(out: Path, history: list[dict[str, Any]], extra: Mapping[str, Any]) -> None:
    write_json(out / HISTORY_FILE, {**extra, "records": history})


def train(data: CifakeData, cfg: FinetuneConfig) -> TrainOutcome:
    """Fine-tune (or resume) per `cfg`; the best model by validation AUC goes to OUT/model/.

    Without a validation split the last model is exported and there is no early stopping.
    Raises TrainingDiverged on a NaN/infinite loss or gradient (the last good checkpoint stays),
    OutOfMemory on CUDA OOM, ValueError on a bad config or a refused resume.
    """
    from transformers import CLIPModel

    from cifake_lib.clip.models import load_processor, quiet_transformers
    from cifake_lib.data.perturb import augment_batch
    from cifake_lib.data.preprocess import ImagePreprocessor

    cfg.validate()
    if not cfg.out:
        raise ValueError("FinetuneConfig.out: the run folder is required")
    out = Path(cfg.out)
    _check_split(data.train, "train")
    val = data.val if data.val is not None and len(data.val) else None
    if val is not None:
        _check_split(val, "val")
    prompts = resolve_prompts(cfg.prompts)

    accelerator = make_accelerator(cfg)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    device = accelerator.device
    if cfg.batch_size < world:
        raise ValueError(f"--batch-size {cfg.batch_size} is smaller than the {world} processes")
    n = len(data.train)
    steps_per_epoch = n // (cfg.batch_size * cfg.grad_accum)
    if steps_per_epoch < 1:
        raise ValueError(f"the train split has {n} images, fewer than one optimizer step's "
                         f"batch_size x grad_accum = {cfg.batch_size * cfg.grad_accum}")
    total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    fingerprint = data_fingerprint(data.train, val)

    # --- resume or start -----------------------------------------------------------------------
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not cfg.resume:
        raise ValueError(f"{out}: holds checkpoints of an earlier run ({ckpt.name}); pass --resume to "
                         "continue it, or choose another --out")
    saved: dict[str, Any] | None = None
    if ckpt is not None:
        saved = read_json(ckpt / STATE_FILE)
        changes = config_changes(saved["config"], cfg)
        if saved.get("data_fingerprint") != fingerprint:
            changes.append("data: the train/validation images differ (source, subset, seed or val fraction)")
        if saved.get("prompts") != prompts.to_dict():
            changes.append(f"prompts: the templates of {cfg.prompts!r} changed")
        if changes:
            raise ValueError(f"--resume refused: {ckpt} was written with another config:\n  "
                             + "\n  ".join(changes)
                             + "\nOnly " + ", ".join(sorted(RUNTIME_FIELDS)) + " may change on resume.")
    elif cfg.resume and main:
        print(f"finetune: nothing to resume in {out / CHECKPOINTS}; starting from {cfg.model}",
              file=sys.stderr, flush=True)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    check_model_source(cfg.model)  # a CNN run, a pickle-only folder: a clear error, not an OSError
    with quiet_transformers():
        processor = load_processor(cfg.model)
        clip = CLIPModel.from_pretrained(cfg.model, dtype=torch.float32, attn_implementation="sdpa")  # fp32 master weights
    if ckpt is not None:
        from safetensors.torch import load_file

        clip.load_state_dict(load_file(str(ckpt / WEIGHTS_FILE)), strict=True)
    if cfg.gradient_checkpointing:
        # transformers >= 5.2x renames it; Colab's 5.15 has only the old name.
        if hasattr(clip, "activation_checkpointing_enable"):
            clip.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = ClipClassifier(clip, processor.tokenizer, prompts)
    set_trainable(model, cfg)
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    compile_towers(model, cfg.compile)
    optimizer = make_adamw(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                           eps=cfg.eps, weight_decay=cfg.weight_decay, device=device)
    if ckpt is not None:
        optimizer.load_state_dict(load_tensors(ckpt / OPTIMIZER_FILE))
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    scaler = getattr(accelerator, "scaler", None)
    if ckpt is not None:
        if scaler is not None and (ckpt / SCALER_FILE).is_file():
            scaler.load_state_dict(load_tensors(ckpt / SCALER_FILE))
        set_rng_state(load_tensors(ckpt / RNG_FILE))
    preprocess = ImagePreprocessor.from_processor(processor)

    state: dict[str, Any] = {"step": 0, "epoch": 0, "step_in_epoch": 0, "seed": cfg.seed,
                             "best_val_auc": None, "best_step": None, "evals_since_best": 0,
                             "status": "running", "window": {"loss": 0.0, "correct": 0, "seen": 0, "steps": 0}}
    history: list[dict[str, Any]] = []
    if saved is not None:
        state.update({k: saved[k] for k in state if k in saved})
        history = read_json(ckpt / HISTORY_FILE)
    history_extra = {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch}

    def snapshot() -> dict[str, Any]:
        return {**state, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                "config": cfg.identity(), "data_fingerprint": fingerprint, "prompts": prompts.to_dict(),
                "world_size": world, "mixed_precision": accelerator.mixed_precision}

    def checkpoint() -> None:
        if main:
            save_checkpoint(out, clip=clip, optimizer=optimizer, scaler=scaler, state=snapshot(),
                            history=history, keep=cfg.keep_checkpoints)
        accelerator.wait_for_everyone()

    def evaluate() -> None:
        """Score val; export the model when its AUC is the best so far; count patience."""
        try:
            scores = _evaluate(accelerator, model, preprocess, val, cfg.eval_batch_size)
        except (RuntimeError, MemoryError) as e:  # CUDA's OutOfMemoryError is a RuntimeError
            if not out_of_memory_kind(e):
                raise
            raise OutOfMemory(_oom_message(cfg, world, "evaluation", out_of_memory_kind(e))) from None
        auc = scores["val_auc"]
        best = state["best_val_auc"]
        improved = best is None or (not math.isnan(auc) and auc > best)
        if improved:
            if not all_finite(trainable):
                raise TrainingDiverged(f"the weights hold NaN/inf at step {state['step']}")
            state.update(best_val_auc=None if math.isnan(auc) else auc, best_step=state["step"],
                         evals_since_best=0)
            if main:
                export_model(clip, processor, out / MODEL_DIR)
            accelerator.wait_for_everyone()
        else:
            state["evals_since_best"] += 1
        history.append({"kind": "val", "step": state["step"], "epoch": state["step"] / steps_per_epoch,
                        **scores, "best": improved})
        if cfg.patience is not None and state["evals_since_best"] >= cfg.patience:
            state["status"] = "early_stopped"

    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "finetune_config.json", cfg.to_dict())
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=state["step"], desc=f"finetune ({cfg.train})", unit="step",
               file=sys.stderr, dynamic_ncols=True, disable=not (cfg.progress and main))
    images = data.train.images
    labels_all = np.asarray(data.train.labels, dtype=np.int64)
    classes_all = np.asarray(data.train.classes, dtype=np.int64)
    steps_this_run = 0
    written = len(history)
    perm_epoch, perm = -1, None
    # Sums since the last log record; in the checkpoint, so a resumed run logs the same values.
    window = state["window"]
    t_window, timed_images = time.perf_counter(), 0
    t_start = time.perf_counter()
    train_seconds, train_images = 0.0, 0

    while state["status"] == "running" and state["step"] < total_steps:
        step = state["step"]
        # LP-FT: the LP phase trains the text side only (the head); then --train decides.
        phase = phase_at(step, cfg, total_steps)
        model.image_grad = phase != "lp"
        model.text_grad = phase == "lp" or cfg.train != "image"
        lr = get_lr(step, cfg, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if perm_epoch != state["epoch"]:
            perm_epoch, perm = state["epoch"], epoch_permutation(n, cfg.seed, state["epoch"])

        # forward / backward over grad_accum micro-batches; gradients sync on the last one only
        t_step = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        try:
            for micro in range(cfg.grad_accum):
                start = (state["step_in_epoch"] * cfg.grad_accum + micro) * cfg.batch_size
                idx = _shard(perm[start:start + cfg.batch_size], rank, world)
                rng = np.random.default_rng([cfg.seed, state["epoch"], state["step_in_epoch"], micro, rank])
                x = augment_batch(images[idx], rng, flip=cfg.flip, jpeg_prob=cfg.jpeg_prob,
                                  blur_prob=cfg.blur_prob)
                x = torch.from_numpy(x).to(device, non_blocking=True)
                y = torch.from_numpy(labels_all[idx]).to(device)
                c = torch.from_numpy(classes_all[idx]).to(device)
                sync = micro == cfg.grad_accum - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(ddp_model):
                    outputs = ddp_model(preprocess(x), c)
                    loss = _loss(cfg, model, outputs, y, c)
                    accelerator.backward(loss / cfg.grad_accum)
                loss_sum += loss.detach()
                correct += (outputs[0].detach().argmax(dim=1) == y).sum()
                seen += len(idx)
            # Check before stepping: a NaN loss must not reach the weights.
            loss_mean = accelerator.reduce(loss_sum / cfg.grad_accum, "mean")
            if not torch.isfinite(loss_mean):
                raise TrainingDiverged(
                    f"the loss is {loss_mean.item()} at step {step} (epoch {state['epoch']}); "
                    f"stopped. The last good checkpoint is {latest_checkpoint(out) or 'none yet'}. "
                    "Try a lower --lr or --mixed-precision no/bf16.")
            grad_norm = accelerator.clip_grad_norm_(trainable, cfg.grad_clip)
            if scaler is None and not torch.isfinite(grad_norm):
                raise TrainingDiverged(f"the gradient norm is {grad_norm.item()} at step {step}; stopped. "
                                       f"The last good checkpoint is {latest_checkpoint(out) or 'none yet'}.")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        except (RuntimeError, MemoryError) as e:  # CUDA's OutOfMemoryError is a RuntimeError
            if not out_of_memory_kind(e):
                raise
            raise OutOfMemory(_oom_message(cfg, world, "training", out_of_memory_kind(e))) from None
        if not cfg.freeze_logit_scale:
            with torch.no_grad():
                clip.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

        state["step"] += 1
        state["step_in_epoch"] += 1
        steps_this_run += 1
        epoch_end = state["step_in_epoch"] >= steps_per_epoch
        if epoch_end:
            state["epoch"] += 1
            state["step_in_epoch"] = 0
        step = state["step"]
        dt = time.perf_counter() - t_step
        train_seconds += dt
        train_images += seen * world
        window["loss"] += float(loss_mean)
        window["correct"] += int(accelerator.reduce(correct, "sum"))
        window["seen"] += seen * world
        window["steps"] += 1
        timed_images += seen * world

        # log
        last = step >= total_steps
        if step % cfg.log_every == 0 or epoch_end or last:
            elapsed = time.perf_counter() - t_window
            record = {"kind": "train", "step": step, "epoch": step / steps_per_epoch, "phase": phase,
                      "loss": window["loss"] / window["steps"],
                      "train_accuracy": window["correct"] / max(1, window["seen"]), "lr": lr,
                      "grad_norm": float(grad_norm), "logit_scale": float(model.logit_scale().detach()),
                      "images_per_second": timed_images / max(1e-9, elapsed)}
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}",
                            img_s=f"{record['images_per_second']:.0f}", refresh=False)
            window = state["window"] = {"loss": 0.0, "correct": 0, "seen": 0, "steps": 0}
            t_window, timed_images = time.perf_counter(), 0
        bar.update(1)

        # evaluate (epoch end, every eval_every steps, last step) and checkpoint
        if val is not None and (epoch_end or last or (cfg.eval_every and step % cfg.eval_every == 0)):
            evaluate()
        if last and state["status"] == "running":
            state["status"] = "finished"
        stopping = cfg.stop_after is not None and steps_this_run >= cfg.stop_after
        if state["status"] != "running" or epoch_end or stopping or step % cfg.save_every == 0:
            if state["status"] != "running" and val is None:
                if main:
                    export_model(clip, processor, out / MODEL_DIR)  # no validation: the last model
                accelerator.wait_for_everyone()
            checkpoint()
        if main and len(history) != written:  # appended this step: rewrite the file (atomically)
            _write_history(out, history, history_extra)
            written = len(history)
        if stopping and state["status"] == "running":
            state["status"] = "stopped"
    bar.close()

    if state["status"] == "running":  # resumed a run that had already finished its steps
        state["status"] = "finished"
    if state["status"] != "stopped" and not (out / MODEL_DIR / "config.json").is_file():
        if main:  # e.g. no evaluation ever improved on NaN: keep the last model
            export_model(clip, processor, out / MODEL_DIR)
        accelerator.wait_for_everyone()
    if main:
        _write_history(out, history, history_extra)
    outcome = TrainOutcome(out=out, status=state["status"], step=state["step"], total_steps=total_steps,
                           best_step=state["best_step"], best_val_auc=state["best_val_auc"],
                           history=history, seconds=time.perf_counter() - t_start,
                           images_per_second=train_images / max(1e-9, train_seconds))
    accelerator.end_training()
    return outcome


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


def training_curves_figure(history: Sequence[Mapping[str, Any]] | Mapping[str, Any] | str | os.PathLike,
                           *, title: str = "Fine-tuning") -> Figure:
    """Loss (train, val) and accuracy (train, val) plus val AUC against optimizer steps."""
    from matplotlib.figure import Figure

    if isinstance(history, (str, os.PathLike)):
        history = load_history(history)
    if isinstance(history, Mapping):
        history = history["records"]
    tr = [r for r in history if r.get("kind") == "train"]
    va = [r for r in history if r.get("kind") == "val"]
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    if tr:
        ax_loss.plot([r["step"] for r in tr], [r["loss"] for r in tr], label="train loss")
        ax_acc.plot([r["step"] for r in tr], [r["train_accuracy"] for r in tr], label="train accuracy")
    if va:
        steps = [r["step"] for r in va]
        ax_loss.plot(steps, [r["val_loss"] for r in va], "o-", label="val loss")
        ax_acc.plot(steps, [r["val_accuracy"] for r in va], "o-", label="val accuracy (0.5)")
        ax_acc.plot(steps, [r["val_auc"] for r in va], "s--", label="val ROC AUC")
        best = [r for r in va if r.get("best")]
        if best:
            ax_acc.axvline(best[-1]["step"], color="grey", linestyle=":", label=f"best (step {best[-1]['step']})")
    ax_loss.set(xlabel="optimizer step", ylabel="cross-entropy", title=f"{title}: loss")
    ax_acc.set(xlabel="optimizer step", ylabel="score", ylim=(0, 1.02), title=f"{title}: accuracy / AUC")
    for ax in (ax_loss, ax_acc):
        if ax.has_data():
            ax.legend(fontsize="small")
    return fig


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
