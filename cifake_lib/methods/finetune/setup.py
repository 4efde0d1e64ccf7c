"""Building a fine-tuning run: the settings checked against the backbone, the model, optimiser and
accelerator, the checkpoint to resume from, and the export of what was trained.

A `Setup` holds what a run is built from; `build` makes it (and finds the checkpoint a resume
continues), `resume` restores the state, and `Setup.export` writes the current model: the
backbone folder OUT/model/ (merged for LoRA), and beside it what the detector needs (CoOp's
context, the CLIP-Adapter, an image-only encoder's linear head as OUT/probe.safetensors).
"""

from __future__ import annotations

import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cifake_lib.clip import backbone
from cifake_lib.clip.coop import CONTEXT_FILE, PromptContext
from cifake_lib.clip.models import load_backbone
from cifake_lib.clip.prompts import PromptSet
from cifake_lib.core.backbones import family_of_reference
from cifake_lib.core.errors import out_of_memory_kind
from cifake_lib.core.files import read_json
from cifake_lib.core.weights import load_safetensors, load_state
from cifake_lib.methods.adapter import attach_adapter, export_adapter
from cifake_lib.methods.checkpoints import (
    CHECKPOINTS,
    HISTORY_FILE,
    OPTIMIZER_FILE,
    RNG_FILE,
    SCALER_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    export_model,
    latest_checkpoint,
    load_tensors,
    refuse_changed,
    resumable_checkpoint,
    set_rng_state,
)
from cifake_lib.methods.finetune.losses import caption_choices, draw_captions
from cifake_lib.methods.finetune.model import (
    ClipClassifier,
    param_groups,
    resolve_prompts,
    set_trainable,
)
from cifake_lib.methods.finetune_config import (
    RUNTIME_FIELDS,
    FinetuneConfig,
    check_run_length,
    config_changes,
    family_problem,
)
from cifake_lib.methods.lora import export_lora
from cifake_lib.methods.speed import compile_towers, make_adamw
from cifake_lib.methods.training import TrainState, data_fingerprint

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData, Split

MODEL_DIR = "model"
FINETUNED_DIR = "model_finetuned"  # with WiSE-FT at alpha < 1: the fine-tuned model itself
PROBE_FILE = "probe.safetensors"  # an image-only encoder's linear head, as a logistic-regression probe
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's own clamp


class OutOfMemory(RuntimeError):
    """CUDA or CPU out of memory, with the settings to change in the message."""


# ---------------------------------------------------------------------------
# The settings against the backbone: checked once, before any data or model loads
# ---------------------------------------------------------------------------

def check_family(cfg: FinetuneConfig, family: str | None) -> None:
    """Refuse, naming the setting, what the backbone's family cannot do (None: not known yet)."""
    problem = family_problem(cfg, family)
    if problem:
        raise ValueError(f"{cfg.model}: {problem}")


def checked(cfg: FinetuneConfig) -> PromptSet:
    """Validate the settings (against the backbone when its family is known without loading it)
    and resolve their prompts: once per run, before any data or model loads (values already
    validated, as `core.config.build` does when it reads them, are not validated again)."""
    cfg.validated()
    check_family(cfg, family_of_reference(cfg.model))
    return resolve_prompts(cfg.prompts)


# ---------------------------------------------------------------------------
# Data order, devices, the accelerator
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
    AcceleratorState is reset first, so runs with other precision/device settings can follow.
    Training curves go to the trackers of `cfg.log_with` under OUT/logs (`trackers.py`)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    from cifake_lib.methods.finetune.trackers import trackers

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not distributed:
        AcceleratorState._reset_state(reset_partial_state=True)
    cpu = cfg.cpu or not torch.cuda.is_available()
    device = torch.device("cpu") if cpu else torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    mp = resolve_mixed_precision(cfg.mixed_precision, device)
    # The LP phase of LP-FT leaves the image tower without gradients: DDP must be told.
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=cfg.lp_ft)]
    return Accelerator(mixed_precision=mp, cpu=cpu, kwargs_handlers=kwargs, log_with=trackers(cfg),
                       project_dir=str(Path(cfg.out) / "logs") if cfg.out else None)


def _shard(idx: np.ndarray, rank: int, world: int) -> np.ndarray:
    return idx[rank::world]

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
            + ("; the contrastive loss pairs images within each forward pass, so only --gradient-checkpointing "
               "keeps its negatives" if cfg.loss != "ce" and where != "evaluation" else "")
            + (f"; for evaluation lower --eval-batch-size ({cfg.eval_batch_size})" if where == "evaluation" else ""))

_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # CUDA's; CPU's: see out_of_memory_kind

def _raise_if_out_of_memory(e: BaseException, cfg: FinetuneConfig, world: int, where: str) -> None:
    """OutOfMemory naming the batch size when `e` is a CUDA or CPU out-of-memory error."""
    kind = out_of_memory_kind(e)
    if kind:
        raise OutOfMemory(_oom_message(cfg, world, where, kind)) from None


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


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
        """What was trained to OUT (`export_trained`; main process), every process waiting for it."""
        if self.main:
            export_trained(self.model, self.processor, self.cfg, self.out)
        self.accelerator.wait_for_everyone()


def export_trained(model: ClipClassifier, processor: Any, cfg: FinetuneConfig, out: Path) -> None:
    """What the run trained, as a detector reads it: OUT/model/ (the backbone, LoRA merged into it,
    or the unchanged input model, written once, when only an added module learns) and the added
    module beside it (CoOp context, CLIP-Adapter, an image-only encoder's linear head)."""
    clip = model.clip
    if cfg.train == "lora":  # merged plain backbone + OUT/lora_adapter/ (methods.lora)
        export_lora(clip, processor, cfg, out, MODEL_DIR)
    elif cfg.train in ("adapter", "prompt"):
        if cfg.train == "adapter":
            export_adapter(model.adapter, out)
        else:
            model.context.save(out / CONTEXT_FILE)
        if not (out / MODEL_DIR / "config.json").is_file():
            export_model(clip, processor, out / MODEL_DIR)
    else:
        export_model(clip, processor, out / MODEL_DIR)
    if model.linear is not None:
        model.linear.as_probe().save(out / PROBE_FILE)


def trained_module(model: ClipClassifier) -> nn.Module:
    """The module a checkpoint saves and loads: CoOp's context, a CLIP-Adapter, else the backbone
    (with LoRA's adapters); with an image-only encoder, the whole classifier (its head learns too)."""
    if model.linear is not None:
        return model
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


def _load_backbone(cfg: FinetuneConfig):
    """The backbone (fp32 master weights, SDPA) and its processor on the CPU; build() moves and trains it."""
    # load_backbone checks the source first: a CNN run, a pickle-only folder give a clear error
    clip, processor = load_backbone(cfg.model, device="cpu", dtype=torch.float32, image_size=cfg.image_size)
    check_family(cfg, backbone.family(clip))  # an unknown Hub id: now that it is loaded
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
    """Check the data, load the backbone, make the optimiser; also the checkpoint to resume from.

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
    clip, processor = _load_backbone(cfg)
    tokenizer = getattr(processor, "tokenizer", None)  # none for an image-only encoder
    if cfg.train == "lora":  # hook: peft adapters injected in place (methods.lora)
        from cifake_lib.methods.lora import attach_lora

        attach_lora(clip, cfg)
    context = PromptContext.create(clip, tokenizer, cfg.n_ctx, seed=cfg.seed) if cfg.train == "prompt" else None
    model = ClipClassifier(clip, tokenizer, prompts, context)
    if cfg.train == "adapter":  # hook: CLIP-Adapter as model.adapter (methods.adapter)
        attach_adapter(model, cfg)
    set_trainable(model, cfg)
    model.to(accelerator.device).train()
    compile_towers(model, tower_compile_mode(cfg))
    groups = param_groups(model, cfg.weight_decay, head_lr_scale=cfg.head_lr / cfg.base_lr)
    optimizer = make_adamw(groups, lr=cfg.base_lr, betas=(cfg.beta1, cfg.beta2),
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
                  captions=caption_choices(prompts) if cfg.loss == "flyp" and model.linear is None else None)
    return setup, ckpt


def resume(setup: Setup, ckpt: Path | None) -> TrainState:
    """The state to start from: a fresh one, or the checkpoint's (gradient scaler, RNG, state, history)."""
    if ckpt is None:
        return TrainState()
    if setup.scaler is not None and (ckpt / SCALER_FILE).is_file():
        setup.scaler.load_state_dict(load_tensors(ckpt / SCALER_FILE))
    set_rng_state(load_tensors(ckpt / RNG_FILE))
    return TrainState.from_json(read_json(ckpt / STATE_FILE), read_json(ckpt / HISTORY_FILE))


__all__ = ["FINETUNED_DIR", "MAX_LOGIT_SCALE", "MODEL_DIR", "PROBE_FILE", "OutOfMemory", "Setup", "build",
           "check_family", "checked", "epoch_permutation", "export_trained", "make_accelerator",
           "resolve_mixed_precision", "resume", "trained_module", "tower_compile_mode"]
