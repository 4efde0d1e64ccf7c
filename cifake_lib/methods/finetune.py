"""Fine-tuning CLIP on CIFAKE: FLYP, its CE ablation, CoOp prompt tuning, WiSE-FT; checkpoints and resume.

The losses (`loss`), named for what they are:

- "flyp" (default): FLYP (Goyal et al., "Finetune like you pretrain", CVPR 2023; locuslab/FLYP
  `src/models/flyp_loss.py`, open_clip's ClipLoss). Each image is paired with a caption of its
  label: one of the prompt set's templates for that label, drawn per image and epoch (seeded),
  with the image's CIFAR class filled in where the set has `{class}` templates. Loss: the
  symmetric in-batch contrastive loss, image->text and text->image, `arange` targets, the learned
  logit scale clamped at 100; both encoders learn. Same-label captions in a batch are negatives,
  as on FLYP's own binary tasks (PatchCamelyon, SST2). The text tower encodes only the batch's
  distinct captions. With several processes, each process's shard is its in-batch set.
- "ce": CE over the averaged class prompts. FLYP's CE ablation (`src/models/ce_ablation.py`) draws
  one random template per class at each step; ours averages every template instead: the text encoder
  embeds every prompt of the set (each label's templates encoded, normalised,
  averaged, normalised again: the zero-shot head of `clip.head`), and

      logits = logit_scale * cos(image, label embedding)       (B, 2): REAL, FAKE
      loss   = cross_entropy(logits, label)                     label 1 = FAKE

- "clip-label-aware": the in-batch CLIP loss with targets spread over every caption of the label.

Whatever the loss, the fine-tuned model stays a zero-shot classifier: `zeroshot.ClipDetector`
with the run's prompts scores it (validation during training, the run's metrics after), and
that is what the run exports (detector.json kind "clip", the model in OUT/model/). Class-aware
prompt sets use each image's own CIFAR class when it is known and the log-mean-exp over classes
otherwise (`clip.head.ZeroShotHead`). detector.json records the loss, a methods paragraph
(`methods_text`) and our settings beside FLYP's own (`hyperparameters_vs_flyp`: FLYP uses
batch 512/256, 500 warm-up steps, a cosine to 0, AdamW (0.9, 0.999), eps 1e-8; ours and why).

`train="prompt"`: CoOp (Zhou et al., IJCV 2022; `clip.coop`): n_ctx context vectors shared by
both labels before the label word, CLIP frozen and byte-identical, the cross-entropy over the
two label prompts. AdamW at `prompt_lr` (default 2e-3) against CoOp's SGD at 2e-3 (momentum 0.9):
AdamW needs no momentum or gradient-scale tuning across models, and the loop already uses it.
The context is saved as OUT/prompt_context.safetensors, read back by `ClipDetector.from_run`.

`wise_ft=[alphas]`: WiSE-FT (Wortsman et al., CVPR 2022; `methods.wise_ft`) after training:
each mix of the starting and the fine-tuned weights scored on validation, OUT/wise_ft.csv, the
best validation AUC exported as OUT/model/ (`wise_ft_alpha` in detector.json).

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
kept): model.safetensors (CoOp: the context vectors only), optimizer.pt and scaler.pt (tensors and plain containers only, read
back with torch.load(weights_only=True)), rng.pt, history.json and state.json (step, epoch,
position in the epoch, seed, best validation AUC, patience, the config). Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifake_lib.clip.coop import CONTEXT_FILE, PromptContext
from cifake_lib.clip.head import (
    ZeroShotHead,
    build_head,
    encode_rows,
    normalize,
    p_fake,
    prompt_index,
)
from cifake_lib.clip.models import load_clip
from cifake_lib.clip.prompts import CLASS_FIELD, PromptSet, get_prompt_set
from cifake_lib.core.errors import out_of_memory_kind
from cifake_lib.core.files import read_json, write_json
from cifake_lib.core.results import RunResult, settings_record
from cifake_lib.core.weights import load_safetensors, load_state
from cifake_lib.data.config import DataConfig, loaded
from cifake_lib.data.perturb import augment_batch
from cifake_lib.methods.adapter import (
    ADAPTER_FILE,
    adapter_methods_text,
    attach_adapter,
    export_adapter,
)
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
    refuse_changed,
    resumable_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from cifake_lib.methods.cost import CostMeter, count_parameters
from cifake_lib.methods.finetune_config import (  # noqa: F401 (re-exported: the settings live there)
    LOSS_NAMES,
    LOSSES,
    MIXED_PRECISION,
    RUNTIME_FIELDS,
    TRAIN_CHOICES,
    FinetuneConfig,
    check_run_length,
    config_changes,
    parse_alphas,
    parse_train,
)
from cifake_lib.methods.lora import export_lora, lora_methods_text, set_lora_trainable
from cifake_lib.methods.speed import compile_towers, make_adamw
from cifake_lib.methods.training import TrainState, data_fingerprint, val_scores, warmup_cosine
from cifake_lib.viz.run_figures import (
    training_curves_figure,  # re-exported: notebook 03 imports it here
)

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData, Split

MODEL_DIR = "model"
FINETUNED_DIR = "model_finetuned"  # with WiSE-FT at alpha < 1: the fine-tuned model itself
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
    return warmup_cosine(cfg.base_lr, cfg.min_lr_ratio, warmup=(i + 1) / (warmup + 1) if i < warmup else 1.0,
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

    logits: torch.Tensor | None  # (B, 2): REAL, FAKE; None when captions were given
    image_embeds: torch.Tensor  # (B, D) unit vectors
    head: ZeroShotHead | None  # the label (and per-class) embeddings and the logit scale of this step
    text_embeds: torch.Tensor | None  # (B, D) unit embeddings of the batch's captions (FLYP)
    logit_scale: torch.Tensor  # exp(CLIP's logit_scale parameter)


class ClipClassifier(nn.Module):
    """CLIPModel + tokenised prompts -> (REAL, FAKE) logits; both towers differentiable.

    The head is `clip.head.ZeroShotHead`, recomputed through the text tower at every call, so the
    text encoder learns; with `context` (CoOp) the label prompts are the learned context vectors
    before a label word. `forward(..., captions=idx)` instead encodes the captions `idx` (indices
    into the prompt set's texts, as FLYP pairs each image with one) and returns their embeddings.
    `image_grad` / `text_grad` False run that tower without gradients (the phases of LP-FT).
    """

    def __init__(self, clip: nn.Module, tokenizer, prompts: PromptSet, context: PromptContext | None = None):
        super().__init__()
        self.clip = clip
        self.prompts = prompts
        self.context = context
        self.texts, self.rows, self.n_classes = prompt_index(prompts)
        enc = tokenizer(self.texts, padding=True, truncation=True, return_tensors="pt")
        self.register_buffer("input_ids", enc["input_ids"], persistent=False)
        self.register_buffer("attention_mask", enc["attention_mask"], persistent=False)
        self.image_grad = True
        self.text_grad = True

    # Which parameters belong to which side.
    def text_parameters(self) -> list[nn.Parameter]:
        return list(self.clip.text_model.parameters()) + list(self.clip.text_projection.parameters())

    def image_parameters(self) -> list[nn.Parameter]:
        adapter = getattr(self, "adapter", None)  # --train adapter: methods.adapter, on the image features
        return (list(self.clip.vision_model.parameters()) + list(self.clip.visual_projection.parameters())
                + (list(adapter.parameters()) if adapter is not None else []))

    def _text_grad(self) -> bool:
        params = self.text_parameters() + ([self.context.ctx] if self.context is not None else [])
        return torch.is_grad_enabled() and self.text_grad and any(p.requires_grad for p in params)

    def head(self) -> ZeroShotHead:
        """The zero-shot head of the prompts (or of the learned context) through the current text tower."""
        with torch.set_grad_enabled(self._text_grad()):
            if self.context is not None:  # CoOp: the logit scale is frozen, so its grad mode changes nothing
                return self.context.head(self.clip)
            rows = encode_rows(self.clip, self.input_ids, self.attention_mask, self.rows)
        return ZeroShotHead.from_rows(rows, self.n_classes, self.logit_scale())

    def caption_embeddings(self, captions: torch.Tensor) -> torch.Tensor:
        """(B, D) unit embeddings of texts[captions]: each distinct caption encoded once."""
        unique, inverse = torch.unique(captions, return_inverse=True)
        ids, mask = self.input_ids[unique], self.attention_mask[unique]
        length = int(mask.sum(dim=1).max())  # drop the padding no caption of this batch needs
        with torch.set_grad_enabled(self._text_grad()):
            out = self.clip.text_model(input_ids=ids[:, :length], attention_mask=mask[:, :length])
            return normalize(self.clip.text_projection(out.pooler_output).float())[inverse]

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled() and self.image_grad and any(
            p.requires_grad for p in self.image_parameters())
        with torch.set_grad_enabled(grad):
            out = self.clip.vision_model(pixel_values=pixel_values)
            return normalize(self.clip.visual_projection(out.pooler_output).float())

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.float().exp()

    def forward(self, pixel_values: torch.Tensor, classes: torch.Tensor | None = None,
                captions: torch.Tensor | None = None) -> ClassifierOutput:
        image_embeds = self.image_embeddings(pixel_values)
        if captions is not None:
            return ClassifierOutput(None, image_embeds, None, self.caption_embeddings(captions), self.logit_scale())
        head = self.head()
        logits = head.logits(image_embeds, classes, normalized=True)
        return ClassifierOutput(logits, image_embeds, head, None, head.logit_scale)


def flyp_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """FLYP's loss (Goyal et al. 2023; open_clip's ClipLoss): the symmetric in-batch contrastive loss.

    image_emb, text_emb: (B, D) unit vectors, text_emb[i] the caption of image i. Image i's
    target is caption i (arange targets) and caption i's is image i; every other caption in the
    batch is a negative, also one of the same label (as FLYP does on its binary tasks).
    """
    logits = logit_scale * image_emb @ text_emb.T  # (B, B)
    targets = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the (REAL, FAKE) logits over the averaged class prompts (see the module notes)."""
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


def caption_choices(prompts: PromptSet) -> tuple[np.ndarray, np.ndarray]:
    """FLYP's captions of a prompt set: (options (K, M) indices into `prompt_index` texts, counts (K,)).

    Row key = label * (C + 1) + (class + 1), class -1 for unknown (C = 0 for sets without
    `{class}`): a known class fills `{class}` with it; an unknown one takes the label's templates
    without a class slot when there are any, else every class's.
    """
    texts, rows, n_classes = prompt_index(prompts)
    index = {t: i for i, t in enumerate(texts)}
    lists = []
    for label in (0, 1):
        slotless = [index[t] for t in prompts.templates(label) if CLASS_FIELD not in t]
        lists.append(slotless if n_classes and slotless else rows[label])
        lists += [rows[2 + label * n_classes + c] for c in range(n_classes)]
    width = max(len(x) for x in lists)
    options = np.array([x + [x[0]] * (width - len(x)) for x in lists], dtype=np.int64)
    return options, np.array([len(x) for x in lists], dtype=np.int64)


def draw_captions(choices: tuple[np.ndarray, np.ndarray], labels: np.ndarray, classes: np.ndarray,
                  seed: int, epoch: int) -> np.ndarray:
    """One caption per image for an epoch: a template of its label chosen uniformly, seeded by
    (seed, epoch), so over the epochs an image meets its label's templates as in FLYP's data."""
    options, counts = choices
    n_classes = len(options) // 2 - 1
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.asarray(classes, dtype=np.int64)
    known = (classes >= 0) & (classes < n_classes)
    key = labels * (n_classes + 1) + np.where(known, classes + 1, 0)
    u = np.random.default_rng([seed, epoch, 0xF1F9]).random(len(labels))
    return options[key, (u * counts[key]).astype(np.int64)]


def compute_loss(cfg: FinetuneConfig, out: ClassifierOutput, labels: torch.Tensor,
                 classes: torch.Tensor | None) -> torch.Tensor:
    """The training objective named by `cfg.loss` for one batch's `ClipClassifier` output."""
    if cfg.loss == "flyp":
        return flyp_loss(out.image_embeds, out.text_embeds, out.logit_scale)
    if cfg.loss == "ce":
        return ce_loss(out.logits, labels)
    text = label_text_embeddings(out.head, labels, classes)
    return label_aware_clip_loss(out.image_embeds, text, labels, out.logit_scale)


def param_groups(model: ClipClassifier, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices only; none on biases, norms, embeddings (CoOp's context
    vectors are token embeddings), logit_scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or "norm" in name or name.startswith("context."):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def set_trainable(model: ClipClassifier, cfg: FinetuneConfig) -> None:
    """requires_grad per --train / --freeze-logit-scale (LP-FT switches sides at run time).

    --train prompt (CoOp) freezes all of CLIP, logit scale included: only the context learns.
    --train lora / adapter: likewise, only the adapters (methods.lora) or the CLIP-Adapter learn.
    """
    if cfg.train in ("lora", "adapter"):  # hook: methods.lora / methods.adapter
        for p in model.clip.parameters():
            p.requires_grad_(False)
        if cfg.train == "lora":
            set_lora_trainable(model.clip)
        return
    for p in model.text_parameters():
        p.requires_grad_(cfg.train in ("both", "text") or cfg.lp_ft)
    for p in model.image_parameters():
        p.requires_grad_(cfg.train in ("both", "image"))
    model.clip.logit_scale.requires_grad_(not cfg.freeze_logit_scale and cfg.train != "prompt")


# ---------------------------------------------------------------------------
# Data: index batches, augment on uint8, preprocess on the device
# ---------------------------------------------------------------------------


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch `epoch`: a function of (seed, epoch) only, so resume needs no state."""
    return np.random.default_rng([seed, epoch, 0xC1FA]).permutation(n)


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
    # No CIFAR classes: class-aware sets marginalise, as the exported detector does (it cannot know
    # a test image's class), so early stopping sees the scores the run will report.
    logits = predict_logits(model, preprocess, split.images[idx], None, batch_size, accelerator.device,
                            accelerator.autocast)
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
    cost: dict[str, Any] | None = None  # methods.cost: parameters, peak memory, throughput of this invocation


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


def _raise_if_out_of_memory(e: BaseException, cfg: FinetuneConfig, world: int, where: str) -> None:
    """OutOfMemory naming the batch size when `e` is a CUDA or CPU out-of-memory error."""
    kind = out_of_memory_kind(e)
    if kind:
        raise OutOfMemory(_oom_message(cfg, world, where, kind)) from None


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
    captions: tuple[np.ndarray, np.ndarray] | None = None  # FLYP: caption_choices of the prompts
    _epoch_captions: tuple[int, np.ndarray] | None = None

    @property
    def trained(self) -> nn.Module:
        """What learns, hence what a checkpoint holds: CLIP, or only the context vectors (CoOp) or the adapter."""
        return trained_module(self.model)

    def epoch_captions(self, epoch: int) -> np.ndarray:
        """FLYP: each train image's caption (index into the prompt texts) in this epoch."""
        if self._epoch_captions is None or self._epoch_captions[0] != epoch:
            self._epoch_captions = (epoch, draw_captions(self.captions, self.train.labels, self.train.classes,
                                                         self.cfg.seed, epoch))
        return self._epoch_captions[1]

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
        """The current model to OUT/model/ (main process), every process waiting for it.

        CoOp: the learned context to OUT/prompt_context.safetensors; model/ is the unchanged
        input model, written once.
        """
        if self.main:
            if self.cfg.train == "lora":  # hook: merged plain CLIP + OUT/lora_adapter/ (methods.lora)
                export_lora(self.clip, self.processor, self.cfg, self.out, MODEL_DIR)
            elif self.cfg.train == "adapter":  # hook: OUT/clip_adapter.safetensors + the input model once
                export_adapter(self.model.adapter, self.out)
                if not (self.out / MODEL_DIR / "config.json").is_file():
                    export_model(self.clip, self.processor, self.out / MODEL_DIR)
            elif self.model.context is None:
                export_model(self.clip, self.processor, self.out / MODEL_DIR)
            else:
                self.model.context.save(self.out / CONTEXT_FILE)
                if not (self.out / MODEL_DIR / "config.json").is_file():
                    export_model(self.clip, self.processor, self.out / MODEL_DIR)
        self.accelerator.wait_for_everyone()


def trained_module(model: ClipClassifier) -> nn.Module:
    """The module a checkpoint saves and loads: CoOp's context, a CLIP-Adapter, else CLIP (with LoRA's adapters)."""
    if model.context is not None:
        return model.context
    return getattr(model, "adapter", None) or model.clip


def _run_length(cfg: FinetuneConfig, n: int, world: int) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps) of a train split of n images."""
    if cfg.batch_size < world:
        raise ValueError(f"--batch-size {cfg.batch_size} is smaller than the {world} processes")
    steps_per_epoch = n // (cfg.batch_size * cfg.grad_accum)
    if steps_per_epoch < 1:
        raise ValueError(f"the train split has {n} images, fewer than one optimizer step's "
                         f"batch_size x grad_accum = {cfg.batch_size * cfg.grad_accum}")
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    check_run_length(cfg, total, steps_per_epoch)  # a run that cannot be meant is refused, naming the setting
    return steps_per_epoch, total


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
    ckpt = resumable_checkpoint(out)  # the newest that loads; says which it took, and why
    saved = read_json(ckpt / STATE_FILE)
    changes = config_changes(saved["config"], cfg)
    if saved.get("data_fingerprint") != fingerprint:
        changes.append("data: the train/validation images differ (source, subset, seed or val fraction)")
    if saved.get("prompts") != prompts.to_dict():
        changes.append(f"prompts: the templates of {cfg.prompts!r} changed")
    if changes:
        raise refuse_changed(ckpt, changes, RUNTIME_FIELDS)
    return ckpt


def _load_clip(cfg: FinetuneConfig):
    """CLIP (fp32 master weights, SDPA) and its processor on the CPU; build() moves and trains it."""
    # load_clip checks the source first: a CNN run, a pickle-only folder give a clear error
    clip, processor = load_clip(cfg.model, device="cpu", dtype=torch.float32)
    if cfg.gradient_checkpointing:
        # transformers >= 5.2x renames it; Colab's 5.15 has only the old name.
        if hasattr(clip, "activation_checkpointing_enable"):
            clip.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return clip, processor


def tower_compile_mode(cfg: FinetuneConfig) -> str:
    """cfg.compile, except for CoOp: it inserts its context through a hook that changes at every
    call, so its towers stay eager ("off")."""
    return "off" if cfg.train == "prompt" else cfg.compile


def build(data: CifakeData, cfg: FinetuneConfig, prompts: PromptSet) -> tuple[Setup, Path | None]:
    """Check the data, load CLIP, make the optimiser; also the checkpoint to resume from.

    `cfg` is already validated and `prompts` resolved from it (`checked`), once per run."""
    from cifake_lib.data.preprocess import ImagePreprocessor

    if not cfg.out:
        raise ValueError("FinetuneConfig.out: the run folder is required")
    _check_split(data.train, "train")
    val = data.val if data.val is not None and len(data.val) else None
    if val is not None:
        _check_split(val, "val")
    accelerator = make_accelerator(cfg)
    steps_per_epoch, total_steps = _run_length(cfg, len(data.train), accelerator.num_processes)
    fingerprint = data_fingerprint(data.train, val)
    ckpt = checkpoint_to_resume(cfg, fingerprint, prompts)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    clip, processor = _load_clip(cfg)
    if cfg.train == "lora":  # hook: peft adapters injected in place (methods.lora)
        from cifake_lib.methods.lora import attach_lora

        attach_lora(clip, cfg)
    context = PromptContext.create(clip, processor.tokenizer, cfg.n_ctx, seed=cfg.seed) if cfg.train == "prompt" else None
    model = ClipClassifier(clip, processor.tokenizer, prompts, context)
    if cfg.train == "adapter":  # hook: CLIP-Adapter as model.adapter (methods.adapter)
        attach_adapter(model, cfg)
    set_trainable(model, cfg)
    model.to(accelerator.device).train()
    compile_towers(model, tower_compile_mode(cfg))
    optimizer = make_adamw(param_groups(model, cfg.weight_decay), lr=cfg.base_lr, betas=(cfg.beta1, cfg.beta2),
                           eps=cfg.eps, weight_decay=cfg.weight_decay, device=accelerator.device)
    if ckpt is not None:  # before prepare: the weights and the optimiser as they were
        load_state(trained_module(model), load_safetensors(ckpt / WEIGHTS_FILE), ckpt / WEIGHTS_FILE)
        optimizer.load_state_dict(load_tensors(ckpt / OPTIMIZER_FILE))
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    setup = Setup(cfg=cfg, out=Path(cfg.out), accelerator=accelerator, clip=clip, processor=processor,
                  model=model, ddp_model=ddp_model, optimizer=optimizer,
                  trainable=[p for p in model.parameters() if p.requires_grad],
                  preprocess=ImagePreprocessor.from_processor(processor), prompts=prompts, train=data.train,
                  val=val, steps_per_epoch=steps_per_epoch, total_steps=total_steps, fingerprint=fingerprint,
                  captions=caption_choices(prompts) if cfg.loss == "flyp" else None)
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
    captions = None  # FLYP: each image's caption of its label, as indices into the prompt texts
    if setup.captions is not None:
        captions = torch.from_numpy(setup.epoch_captions(state.epoch)[idx]).to(device)
    return x, y, c, captions


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
            x, y, c, captions = _batch(setup, state, perm, micro)
            sync = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(setup.ddp_model):
                out = setup.ddp_model(setup.preprocess(x), c, captions)
                loss = compute_loss(cfg, out, y, c)
                accelerator.backward(loss / cfg.grad_accum)
            loss_sum += loss.detach()
            if out.logits is not None:
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
    except (RuntimeError, MemoryError) as e:  # CUDA's OutOfMemoryError is a RuntimeError
        _raise_if_out_of_memory(e, cfg, setup.world, "training")
        raise
    if setup.clip.logit_scale.requires_grad:  # frozen (CoOp, --freeze-logit-scale): left byte-identical
        with torch.no_grad():
            setup.clip.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
    return StepStats(phase=phase, lr=lr, loss=loss_mean, correct=int(accelerator.reduce(correct, "sum")),
                     seen=seen * setup.world, grad_norm=float(grad_norm), seconds=time.perf_counter() - t0)


def evaluate(setup: Setup, state: TrainState) -> None:
    """Score validation; export the model when its AUC is the best so far; stop when out of patience."""
    cfg = setup.cfg
    try:
        scores = _evaluate(setup.accelerator, setup.model, setup.preprocess, setup.val, cfg.eval_batch_size)
    except (RuntimeError, MemoryError) as e:
        _raise_if_out_of_memory(e, cfg, setup.world, "evaluation")
        raise
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
        save_checkpoint(setup.out, clip=setup.trained, optimizer=setup.optimizer, scaler=setup.scaler,
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
              # FLYP scores captions, not labels: no train accuracy without an extra text pass
              "train_accuracy": None if setup.cfg.loss == "flyp" else w["correct"] / max(1, w["seen"]), "lr": stats.lr, "grad_norm": stats.grad_norm,
              "logit_scale": float(setup.model.logit_scale().detach()), "images_per_second": images_per_second}
    state.history.append(record)
    state.reset_window()
    return record


def _write_history(setup: Setup, state: TrainState) -> None:
    if setup.main:
        write_json(setup.out / HISTORY_FILE, {"total_steps": setup.total_steps,
                                              "steps_per_epoch": setup.steps_per_epoch,
                                              "records": state.history})


def checked(cfg: FinetuneConfig) -> PromptSet:
    """Validate the settings and resolve their prompts: once per run, before any data or model loads."""
    cfg.validate()
    return resolve_prompts(cfg.prompts)


def train(data: CifakeData, cfg: FinetuneConfig, prompts: PromptSet | None = None) -> TrainOutcome:
    """Fine-tune (or resume) per `cfg`; the best model by validation AUC goes to OUT/model/.

    prompts: `checked(cfg)`, when the caller has checked the settings already (else done here).

    Without a validation split the last model is exported and there is no early stopping.
    Raises TrainingDiverged on a NaN/infinite loss or gradient (the last good checkpoint stays),
    OutOfMemory on CUDA or CPU OOM, ValueError on a bad config or a refused resume.
    """
    from tqdm.auto import tqdm

    # build the model and optimiser; resume from the newest checkpoint when asked
    setup, ckpt = build(data, cfg, checked(cfg) if prompts is None else prompts)
    state = resume(setup, ckpt)
    cost_meter = CostMeter(setup.accelerator.device, setup.world)
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
                        images_per_second=meter.train_images / max(1e-9, meter.train_seconds),
                        cost=cost_meter.record(trainable_params=count_parameters(setup.trainable),
                                               total_params=count_parameters(setup.model.parameters()),
                                               train_images=meter.train_images, train_seconds=meter.train_seconds))


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


# FLYP's own settings (locuslab/FLYP: src/args.py defaults and the README's commands) and ours.
FLYP_SETTINGS = {
    "source": "locuslab/FLYP src/args.py and README.md (Goyal et al., CVPR 2023)",
    "batch_size": "512 (ImageNet), 256 (iWILDCam, FMoW, transfer and few-shot)",
    "lr": 1e-5,
    "warmup_steps": 500,
    "min_lr_ratio": 0.0,  # --min_lr 0
    "weight_decay": "0.1 (ImageNet), 0.2 (iWILDCam, FMoW)",
    "betas": [0.9, 0.999],  # torch.optim.AdamW's defaults: FLYP passes none
    "eps": 1e-8,
    "epochs": "10 (ImageNet), 20 (iWILDCam, FMoW)",
}
WHY_OURS = ("batch 128: a ViT-B/32 fine-tune of both towers must fit a 15 GB T4 (Colab's GPU) with fp16 "
            "activations; warm-up 5% of the run and a cosine floor of 0.1 x lr: our runs are a few hundred "
            "to a few thousand steps, where FLYP's 500 warm-up steps would be most of the run; AdamW beta2 "
            "0.98 and eps 1e-6: CLIP's pre-training values, stabler in fp16 than PyTorch's defaults")


def hyperparameters_vs_flyp(cfg: FinetuneConfig) -> dict[str, Any]:
    """detector.json's record: our settings beside FLYP's own, and why ours differ."""
    ours = {"batch_size": cfg.batch_size * cfg.grad_accum, "lr": cfg.base_lr,
            "warmup_steps": cfg.warmup_steps if cfg.warmup_steps is not None else "5% of the run",
            "min_lr_ratio": cfg.min_lr_ratio, "weight_decay": cfg.weight_decay, "betas": [cfg.beta1, cfg.beta2],
            "eps": cfg.eps, "epochs": cfg.max_steps and f"{cfg.max_steps} steps" or cfg.epochs}
    return {"ours": ours, "flyp": FLYP_SETTINGS, "why": WHY_OURS}


def methods_text(cfg: FinetuneConfig) -> str:
    """One paragraph for a methods section: the loss by its name, with its source and settings."""
    if cfg.train in ("lora", "adapter"):  # hook: methods.lora / methods.adapter
        added = lora_methods_text(cfg) if cfg.train == "lora" else adapter_methods_text(cfg)
        if cfg.train == "adapter" or cfg.loss == "ce":
            return added + " " + CE_TEXT
        return added + " " + _flyp_text(cfg)
    if cfg.train == "prompt":
        return (f"CoOp prompt tuning (Zhou et al., IJCV 2022): {cfg.n_ctx} context vectors shared by both labels, "
                f"placed before the label word, learned with the cross-entropy over the two label prompts; "
                f"both CLIP encoders frozen. AdamW at {cfg.prompt_lr:g} with warm-up and cosine decay "
                "(CoOp: SGD at 2e-3, momentum 0.9, cosine).")
    if cfg.loss == "flyp":
        s = _flyp_text(cfg)
    elif cfg.loss == "ce":
        s = f"{CE_TEXT} Training {cfg.train} encoder(s)."
    else:
        s = f"{LOSS_NAMES[cfg.loss]}, training {cfg.train} encoder(s)."
    h = hyperparameters_vs_flyp(cfg)["ours"]
    return (s + f" Settings: batch {h['batch_size']}, lr {h['lr']:g}, warm-up {h['warmup_steps']}, cosine floor "
            f"{h['min_lr_ratio']:g} x lr, AdamW betas {tuple(h['betas'])}, eps {h['eps']:g}, weight decay "
            f"{h['weight_decay']:g} (FLYP: batch 512/256, warm-up 500 steps, floor 0, betas (0.9, 0.999), "
            f"eps 1e-8; ours differ because {WHY_OURS}).")


# How our CE differs from FLYP's ce_ablation.py (which draws one random template per class at each step).
CE_VARIANT = "averaged class prompts"
CE_TEXT = ("Loss: CE over the averaged class prompts: the cross-entropy of logit_scale x cos(image, label "
           "embedding), each label's embedding the normalised mean of all its templates' embeddings at every step "
           "(FLYP's CE ablation instead draws one random template per class at each step).")


def _flyp_text(cfg: FinetuneConfig) -> str:
    return (f"FLYP (Goyal et al., CVPR 2023): each training image is paired with a caption of its label (one of "
            f"the {cfg.prompts!r} prompt set's templates, drawn per image and epoch, the CIFAR class filled in "
            "where the set has {class} templates), trained with the symmetric in-batch contrastive loss (arange "
            "targets); same-label captions in a batch are negatives, as in FLYP's binary tasks. Two differences "
            "from FLYP: one template per image per epoch (FLYP's data has one row per image and template), and "
            "the learned logit scale clamped at 100. The model is evaluated as a zero-shot classifier.")


def _detector(cfg: FinetuneConfig, model_dir: Path, prompts: PromptSet, device):
    from cifake_lib.methods.zeroshot import ClipDetector, load_for_inference

    model, processor = load_for_inference(model_dir, device)
    context_file = Path(cfg.out) / CONTEXT_FILE
    context = PromptContext.load(context_file, processor.tokenizer) if cfg.train == "prompt" else None
    adapter = None
    if cfg.train == "adapter":  # hook: the CLIP-Adapter scores the run (clip.adapter)
        from cifake_lib.clip.adapter import ClipAdapter

        adapter = ClipAdapter.load(Path(cfg.out) / ADAPTER_FILE).to(next(model.parameters()).device)
    return ClipDetector(model, processor, prompts, detector=f"finetune:{cfg.train}", model_ref=MODEL_DIR,
                        context=context, adapter=adapter)


def apply_wise_ft(data: CifakeData, cfg: FinetuneConfig, prompts: PromptSet, device=None) -> float:
    """WiSE-FT over cfg.wise_ft: OUT/wise_ft.csv, and the alpha with the best validation AUC
    exported as OUT/model/ (the fine-tuned model then kept in OUT/model_finetuned/). Returns alpha."""
    from transformers import CLIPModel

    from cifake_lib.core.files import write_csv
    from cifake_lib.methods.wise_ft import COLUMNS, WISE_FT_FILE, interpolate, wise_ft_curve

    val = data.val if data.val is not None and len(data.val) else None
    if val is None:
        raise ValueError("wise_ft chooses alpha on validation: the data has no validation split")
    out = Path(cfg.out)
    ft_dir = out / FINETUNED_DIR if (out / FINETUNED_DIR / "config.json").is_file() else out / MODEL_DIR
    zero_shot = CLIPModel.from_pretrained(cfg.model, dtype=torch.float32).state_dict()
    ft = CLIPModel.from_pretrained(ft_dir, dtype=torch.float32)  # loaded once: the curve's weights and the export
    fine_tuned = ft.state_dict()
    det = _detector(cfg, ft_dir, prompts, device)

    def make_detector(state: Mapping[str, torch.Tensor]):
        det.model.load_state_dict(state, strict=True)  # copies into the loaded model (its dtype/device)
        # the prompts through this text tower (no context: wise_ft refuses train=prompt)
        det.head = build_head(det.model, det.processor, det.prompts, marginal=det.head.marginal)
        return det

    rows = wise_ft_curve(zero_shot, fine_tuned, cfg.wise_ft, make_detector=make_detector, val=val,
                         test=data.test, batch_size=cfg.eval_batch_size)
    write_csv(out / WISE_FT_FILE, rows, COLUMNS)
    alpha = next(r["alpha"] for r in rows if r["chosen"])
    if alpha != 1.0:
        if ft_dir == out / MODEL_DIR:
            os.replace(out / MODEL_DIR, out / FINETUNED_DIR)
        # interpolate returns new tensors before load_state_dict copies them into ft (fine_tuned aliases ft)
        ft.load_state_dict(interpolate(zero_shot, fine_tuned, alpha))
        export_model(ft, det.processor, out / MODEL_DIR)
    elif ft_dir != out / MODEL_DIR:  # an earlier call chose alpha < 1: the fine-tuned model is the one
        shutil.rmtree(out / MODEL_DIR, ignore_errors=True)
        os.replace(ft_dir, out / MODEL_DIR)
    return alpha


def evaluate_run(data: CifakeData, cfg: FinetuneConfig, outcome: TrainOutcome, prompts: PromptSet, *,
                 seconds: float, args: Mapping[str, Any] | None = None, device: str | torch.device | None = None,
                 wise_ft_alpha: float | None = None) -> dict[str, Any]:
    """Score the exported model on val (threshold) and test with `ClipDetector`; write the run folder."""
    from cifake_lib.evaluation.runs import write_run
    from cifake_lib.viz.plots import save_figure

    out = Path(cfg.out)
    if device is None and cfg.cpu:
        device = "cpu"
    det = _detector(cfg, out / MODEL_DIR, prompts, device)
    val = data.val if data.val is not None and len(data.val) else None
    bs = cfg.eval_batch_size
    p_test = det.predict_proba(data.test.images, bs, classes=data.test.classes)
    p_val = det.predict_proba(val.images, bs, classes=val.classes) if val is not None else None
    meta = {**det.to_json(MODEL_DIR), "prompt_set": prompts.name, "base_model": cfg.model, "train": cfg.train,
            "loss": cfg.loss, "loss_name": LOSS_NAMES[cfg.loss], "method": methods_text(cfg),
            "hyperparameters": hyperparameters_vs_flyp(cfg), "wise_ft_alpha": wise_ft_alpha,
            "best_step": outcome.best_step, "best_val_auc": outcome.best_val_auc,
            "steps": outcome.step, "total_steps": outcome.total_steps, "status": outcome.status,
            "ce_variant": CE_VARIANT if cfg.loss == "ce" else None}
    if (out / FINETUNED_DIR / "config.json").is_file() and wise_ft_alpha not in (None, 1.0):
        meta["finetuned_model"] = FINETUNED_DIR  # alpha = 1, for comparisons with the chosen alpha
    meta.pop("threshold", None)  # chosen on validation by write_run
    metrics = write_run(out, test=data.test, p_test=p_test, val=val, p_val=p_val, detector=meta,
                        model=cfg.model, data=data.source, seed=cfg.seed,
                        args={**(args if args is not None else cfg.to_dict()), "ce_variant": meta["ce_variant"]},
                        seconds=seconds, cost=outcome.cost)
    if outcome.history:
        save_figure(training_curves_figure(outcome.history, title=f"finetune:{cfg.train}"), out / CURVES_FILE)
    return metrics


def finetune(data: CifakeData, cfg: FinetuneConfig, *, args: Mapping[str, Any] | None = None,
             prompts: PromptSet | None = None) -> FinetuneResult:
    """Train (or resume), WiSE-FT when asked, then evaluate the model and write the run folder.

    When `cfg.stop_after` ends the run early, no metrics are written (status "stopped"): run
    again with `resume=True` to continue. args: run.json's settings record (default: `cfg`'s);
    prompts: `checked(cfg)` when the caller has checked the settings already.
    """
    t0 = time.perf_counter()
    prompts = checked(cfg) if prompts is None else prompts
    outcome = train(data, cfg, prompts)
    if outcome.status == "stopped":
        return FinetuneResult(outcome=outcome, metrics=None, out=outcome.out)
    if int(os.environ.get("RANK", "0")) != 0:  # under `accelerate launch` only the main process reports
        return FinetuneResult(outcome=outcome, metrics=None, out=outcome.out)
    device = "cpu" if cfg.cpu else None
    alpha = apply_wise_ft(data, cfg, prompts, device) if cfg.wise_ft else None
    metrics = evaluate_run(data, cfg, outcome, prompts, seconds=time.perf_counter() - t0, args=args, device=device,
                           wise_ft_alpha=alpha)
    return FinetuneResult(outcome=outcome, metrics=metrics, out=outcome.out)


def run(data: DataConfig | CifakeData, cfg: FinetuneConfig, out: str | os.PathLike) -> RunResult:
    """Fine-tune CLIP into `out` (or resume it), then score the best model; status "stopped" after
    `cfg.stop_after`. The settings are checked and the prompts resolved once, before data or model load.

    Raises `TrainingDiverged` / `OutOfMemory` when training cannot go on.
    """
    t0 = time.perf_counter()
    out = Path(out)
    cfg = dataclasses.replace(cfg, out=str(out),
                              data=data.data if isinstance(data, DataConfig) else getattr(data, "source", None))
    prompts = checked(cfg)
    cifake, dcfg = loaded(data, progress=cfg.progress)
    r = finetune(cifake, cfg, args=settings_record("finetune", dcfg, cfg, out=out), prompts=prompts)
    o = r.outcome
    outcome = {"status": o.status, "step": o.step, "total_steps": o.total_steps, "best_step": o.best_step,
               "best_val_auc": o.best_val_auc, "images_per_second": o.images_per_second}
    stopped = r.metrics is None and o.status == "stopped"
    return RunResult("finetune", out, runs=[] if r.metrics is None else [out],
                     metrics={} if r.metrics is None else {r.metrics["detector"]: r.metrics},
                     seconds=time.perf_counter() - t0, status="stopped" if stopped else "complete",
                     info={"outcome": outcome, "train": cfg.train, "main_process": os.environ.get("RANK", "0") == "0"})


__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "TrainOutcome",
    "ClipClassifier",
    "TrainingDiverged",
    "OutOfMemory",
    "finetune",
    "run",
    "checked",
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
