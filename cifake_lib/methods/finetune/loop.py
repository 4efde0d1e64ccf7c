"""The fine-tuning loop: `train` reads top to bottom — build (and resume), then per step the
epoch's order, `train_step` (forward, loss, backward over the micro-batches, NaN checks, clipping,
the update), log, `evaluate` (validation; export the best model; patience), `checkpoint`.

Where the run is lives in one `training.TrainState`; the learning rate is a pure function of the
step (`get_lr`). It runs through Hugging Face Accelerate, so one code path serves CPU, one GPU and
several: every process draws the same seeded permutation and takes its shard of each batch, and
validation is scored shard by shard and gathered, so every process takes the same decisions.
Gradient accumulation is explicit (`no_sync` on all micro-batches but the last), so the loop can
check the loss before the optimizer steps.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cifake_lib.clip import backbone
from cifake_lib.clip.prompts import PromptSet
from cifake_lib.core.files import write_json
from cifake_lib.data.perturb import augment_batch
from cifake_lib.methods.checkpoints import (
    HISTORY_FILE,
    TrainingDiverged,
    all_finite,
    latest_checkpoint,
    save_checkpoint,
)
from cifake_lib.methods.cost import CostMeter, count_parameters
from cifake_lib.methods.finetune.losses import compute_loss
from cifake_lib.methods.finetune.model import ClipClassifier, predict_logits, validation_scores
from cifake_lib.methods.finetune.setup import (
    MAX_LOGIT_SCALE,
    MODEL_DIR,
    Setup,
    _raise_if_out_of_memory,
    _shard,
    build,
    checked,
    epoch_permutation,
    resume,
)
from cifake_lib.methods.finetune.trackers import start_trackers
from cifake_lib.methods.finetune_config import FinetuneConfig
from cifake_lib.methods.training import TrainState, warmup_cosine

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData, Split


# ---------------------------------------------------------------------------
# The schedule: a pure function of the step
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
# Evaluation during training
# ---------------------------------------------------------------------------


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
# One step, evaluation, checkpoint, log
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
        group["lr"] = lr * group.get("lr_scale", 1.0)  # the linear head of an image-only encoder: head_lr
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
    scale = backbone.logit_scale(setup.clip)
    # CLIP's own clamp at 100; frozen (CoOp, --freeze-logit-scale): left byte-identical. SigLIP's
    # pre-trained scale is above 100 (exp 4.7 ~ 112) and was never clamped: left as it learns.
    if scale is not None and scale.requires_grad and backbone.family(setup.clip) == "clip":
        with torch.no_grad():
            scale.clamp_(0.0, MAX_LOGIT_SCALE)
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
    setup.accelerator.log({f"val/{k.removeprefix('val_')}": v for k, v in scores.items()}, step=state.step)
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
    setup.accelerator.log({f"train/{k}": record[k] for k in ("loss", "train_accuracy", "lr", "grad_norm",
                                                              "logit_scale", "images_per_second")
                           if record[k] is not None}, step=state.step)
    return record

def _write_history(setup: Setup, state: TrainState) -> None:
    if setup.main:
        write_json(setup.out / HISTORY_FILE, {"total_steps": setup.total_steps,
                                              "steps_per_epoch": setup.steps_per_epoch,
                                              "records": state.history})

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
    start_trackers(setup.accelerator, cfg)
    cost_meter = CostMeter(setup.accelerator.device, setup.world)
    t_start = time.perf_counter()
    if setup.main:
        setup.out.mkdir(parents=True, exist_ok=True)
        write_json(setup.out / "finetune_config.json", {**cfg.to_dict(), "model": cfg.recorded_model()})
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


__all__ = ["StepStats", "TrainOutcome", "checkpoint", "evaluate", "get_lr", "log_record", "phase_at",
           "schedule_phases", "train", "train_step"]
