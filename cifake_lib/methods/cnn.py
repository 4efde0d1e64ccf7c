"""The CIFAKE paper's CNN (Bird & Lotfi, arXiv 2303.14126; IEEE Access 2024) as a reference detector.

The paper trains a small CNN on the native 32x32 images: conv layers with max pooling, a small
dense layer and a sigmoid output. Its best topology, two conv layers of 32 3x3 filters (each
followed by 2x2 max pooling), a dense layer of 64 and a sigmoid, reached 92.98% test accuracy.

`CNNConfig()` is exactly that network (84,001 parameters). What the paper leaves open is the
training recipe; ours (`TrainConfig`) is: Adam, peak lr 4e-3 with a 3% linear warm-up and cosine
decay, batch 128, 15 epochs, random horizontal flips, and the epoch kept for the final model is
the one with the best *validation* accuracy (ties: validation AUC) -- never test. The learning
rate and batch size were chosen on validation accuracy by `bench/sweep_cnn.py` (20,000 train
images, 20% of them validation, 15 epochs; lr 1e-3/2e-3/4e-3 x batch 64/128): lr 4e-3 with
batch 128 ranked first (validation accuracy 0.9283, AUC 0.978; the previous lr 2e-3, batch 64:
0.9257, 0.978). Test figures of bench/bench_cnn.py are information only, never a target.
`describe_deviations()` lists what differs from the paper; detector.json records it.
`CNNConfig(batch_norm=True)` and wider or deeper `channels` are available for experiments.

Saliency: `CifakeCNN.features(x)` returns the last conv layer's activation map (after ReLU,
before its pooling), shape (B, C, h, w) = (B, 32, 13, 13) for the paper's network;
`CifakeCNN.head` maps it to one logit. Grad-CAM hooks `model.features` (or, equivalently,
`model.cam_layer`, the module that produces that map).

Inputs everywhere are uint8 (N, H, W, 3) arrays, converted to float on the model's device
batch by batch (no per-image PIL in the loop); non-32x32 inputs are resized with antialiased
bicubic interpolation. p_fake = sigmoid(logit); label 1 = FAKE.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifake_lib.core.results import RunResult, settings_record
from cifake_lib.data.config import DataConfig, loaded
from cifake_lib.data.preprocess import check_uint8_images
from cifake_lib.methods.cnn_checkpoint import (
    CHECKPOINT_DIR,
    load_checkpoint,
    save_checkpoint,
    started_at,
)
from cifake_lib.methods.cnn_config import CNNConfig, CnnStageConfig, TrainConfig  # noqa: F401 (re-exported)
from cifake_lib.methods.training import TrainState, data_fingerprint, val_scores, warmup_cosine

logger = logging.getLogger(__name__)  # epoch lines; progress goes through tqdm

if TYPE_CHECKING:
    from cifake_lib.data.load import CifakeData, Split

WEIGHTS_FILE = "cnn.safetensors"
HISTORY_FILE = "history.json"
KIND = "cnn"
DETECTOR = "cnn"

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def describe_deviations(config: CNNConfig, train_config: TrainConfig, *,
                        has_val: bool = True) -> list[str]:
    """What this configuration changes or chooses where the paper is silent, one line each."""
    out = []
    paper = CNNConfig.paper()
    for f in fields(CNNConfig):
        ours, theirs = getattr(config, f.name), getattr(paper, f.name)
        if ours != theirs:
            out.append(f"architecture: {f.name} = {ours!r} (paper: {theirs!r})")
    tc = train_config
    out.append(f"optimiser: Adam, peak lr {tc.lr:g}, {tc.warmup_fraction:.0%} linear warm-up, cosine "
               f"decay to {tc.min_lr_ratio:g}x, weight decay {tc.weight_decay:g}, batch {tc.batch_size}, "
               f"{tc.epochs} epochs")
    if tc.flip:
        out.append("augmentation: random horizontal flips")
    if has_val:
        out.append("final epoch chosen on validation accuracy (then AUC); validation carved from train")
    out.append("loss: binary cross-entropy on the logit (sigmoid applied at prediction)")
    return out


# ---------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------


class CifakeCNN(nn.Module):
    """Conv blocks -> dense -> one logit. Input: float (B, 3, S, S) in [0, 1].

    `features` ends with the last conv block's ReLU (its max pooling lives at the start of
    `head`), so `features(x)` is the map Grad-CAM wants and `head(features(x))` the logit.
    """

    def __init__(self, config: CNNConfig | None = None):
        super().__init__()
        self.config = config = config or CNNConfig()
        if not config.channels:
            raise ValueError("CNNConfig.channels needs at least one conv layer")
        layers: list[nn.Module] = []
        in_ch, side = 3, config.image_size
        for i, out_ch in enumerate(config.channels):
            if i > 0:  # the previous block's pooling
                layers.append(nn.MaxPool2d(2))
                side //= 2
            layers.append(nn.Conv2d(in_ch, out_ch, config.kernel_size, padding=config.padding,
                                    bias=not config.batch_norm))
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            side = side + 2 * config.padding - config.kernel_size + 1
            in_ch = out_ch
        side //= 2  # the last block's pooling, in the head
        if side < 1:
            raise ValueError(f"CNNConfig: {len(config.channels)} conv blocks shrink a "
                             f"{config.image_size}px input to nothing")
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(in_ch * side * side, config.dense),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.dense, 1),
        )

    @property
    def cam_layer(self) -> nn.Module:
        """The module whose output is the last conv activation map (Grad-CAM target)."""
        return self.features[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, S, S) in [0, 1] -> logits (B,); p_fake = sigmoid(logit)."""
        return self.head(self.features(x)).squeeze(1)


def to_input(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """uint8 (B, H, W, 3) on any device -> float (B, 3, size, size) in [0, 1] on the same device."""
    x = images.permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        # Antialiased bicubic: a faithful downscale of large images; can overshoot, so clamp.
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True,
                          align_corners=False).clamp_(0, 255)
    return x.div_(255.0)




def _pick_device(device: str | torch.device | None) -> torch.device:
    if isinstance(device, torch.device):
        return device
    from cifake_lib.clip.models import pick_device

    return pick_device(device)


@torch.no_grad()
def predict_logits(model: CifakeCNN, images: np.ndarray | torch.Tensor, batch_size: int = 1024,
                   device: torch.device | None = None) -> np.ndarray:
    """Logits for uint8 (N, H, W, 3) images, batch by batch, in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            batch = images[i:i + batch_size]
            if isinstance(batch, np.ndarray):
                batch = torch.from_numpy(np.ascontiguousarray(batch))
            x = to_input(batch.to(device, non_blocking=True), model.config.image_size)
            out.append(model(x).float().cpu())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros(0, dtype=np.float32)
    return torch.cat(out).numpy()


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-z.astype(np.float64)))).astype(np.float32)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def lr_at_progress(progress: float, cfg: TrainConfig) -> float:
    """Learning rate at `progress` in [0, 1] of training (steps or, with a time limit, seconds):
    linear warm-up over warmup_fraction, then cosine decay to lr * min_lr_ratio at the end."""
    progress = min(max(progress, 0.0), 1.0)
    wf = cfg.warmup_fraction
    warm = max(progress / wf, 1e-3) if progress < wf else 1.0
    return warmup_cosine(cfg.lr, cfg.min_lr_ratio, warmup=warm, progress=(progress - wf) / max(1e-9, 1.0 - wf))


@dataclass
class TrainResult:
    model: CifakeCNN  # holds the best epoch's weights, in eval mode
    best_epoch: int  # 1-based; the last epoch when there is no validation split
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # training wall time, evaluation on validation included
    images_per_second: float = 0.0  # training throughput (forward + backward), all epochs


@dataclass
class _CNNRun:
    """What the CNN's training loop works with."""

    model: CifakeCNN
    opt: torch.optim.Optimizer
    x_all: torch.Tensor  # the whole split, uint8, on the device
    y_all: torch.Tensor
    config: CNNConfig
    tc: TrainConfig
    gen: torch.Generator  # shuffling and flips, on the CPU
    total_steps: int
    t_start: float = field(default_factory=time.perf_counter)
    eval_seconds: float = 0.0  # the last validation pass: reserved at the end of a time-limited run

    def schedule(self, step: int) -> float | None:
        """The learning rate of `step`, on steps or (time limit) whichever is further along; None: out of time."""
        frac = step / self.total_steps
        if self.tc.time_limit is not None:
            used = (time.perf_counter() - self.t_start) / max(1e-9, self.tc.time_limit - self.eval_seconds)
            if used >= 1.0:
                return None
            frac = max(frac, used)
        return lr_at_progress(frac, self.tc)


def _train_epoch(run: _CNNRun, state: TrainState, progress: bool) -> tuple[dict[str, Any], bool]:
    """One epoch (or up to the time limit): its record (images, train loss, ...) and whether time ran out."""
    from tqdm.auto import tqdm

    tc, model, device = run.tc, run.model, run.x_all.device
    n = len(run.x_all)
    model.train()
    perm = torch.randperm(n, generator=run.gen)
    flips = torch.rand(n, generator=run.gen) < 0.5 if tc.flip else None
    loss_sum, seen, lr, out_of_time = 0.0, 0, float("nan"), False
    t_epoch = time.perf_counter()
    bar = tqdm(total=n, desc=f"cnn epoch {state.epoch + 1}/{tc.epochs}", unit="img", file=sys.stderr,
               disable=not progress, leave=False, dynamic_ncols=True)
    for i in range(0, n, tc.batch_size):
        idx = perm[i:i + tc.batch_size]
        x = to_input(run.x_all[idx.to(device)], run.config.image_size)
        if flips is not None:
            x = torch.where(flips[idx].to(device)[:, None, None, None], x.flip(3), x)
        y = run.y_all[idx.to(device)]
        step_lr = run.schedule(state.step)
        if step_lr is None:
            out_of_time = True
            break
        lr = step_lr
        for group in run.opt.param_groups:
            group["lr"] = lr
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        state.step += 1
        loss_sum += loss.item() * len(idx)
        seen += len(idx)
        bar.update(len(idx))
        if state.step % 20 == 0:
            rate = seen / max(1e-9, time.perf_counter() - t_epoch)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{rate:.0f}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - t_epoch
    state.epoch += 1
    return {"epoch": state.epoch, "images": seen, "train_loss": loss_sum / max(1, seen), "lr_end": lr,
            "train_seconds": round(seconds, 3), "images_per_second": round(seen / max(1e-9, seconds), 1),
            "_seconds": seconds}, out_of_time


def _validate(run: _CNNRun, val: Split, state: TrainState, record: dict[str, Any]) -> bool:
    """Score validation into `record`; True when (accuracy, AUC) is the best so far."""
    t_eval = time.perf_counter()
    logits = predict_logits(run.model, check_uint8_images(val.images), run.tc.eval_batch_size, run.x_all.device)
    y_val = np.asarray(val.labels)
    scores = val_scores(y_val, logits, logits >= 0)
    record.update(**scores, val_loss=float(F.binary_cross_entropy_with_logits(
        torch.from_numpy(logits), torch.from_numpy(y_val.astype(np.float32)))))
    improved = state.observe((scores["val_accuracy"],
                              -1.0 if math.isnan(scores["val_auc"]) else scores["val_auc"]))
    run.eval_seconds = time.perf_counter() - t_eval
    return improved


def _report_epoch(record: dict[str, Any], tc: TrainConfig, out_of_time: bool, n: int) -> None:
    msg = f"cnn epoch {record['epoch']}/{tc.epochs}: loss {record['train_loss']:.4f}"
    if "val_accuracy" in record:
        msg += f", val acc {record['val_accuracy']:.4f}, val AUC {record['val_auc']:.4f}"
    logger.info(msg + f", {record['images_per_second']:.0f} img/s")
    if out_of_time:
        logger.info("cnn: time limit (%gs) reached in epoch %d (%s/%s images)", tc.time_limit, record["epoch"],
                    f"{record['images']:,}", f"{n:,}")


def train_cnn(train: Split, val: Split | None = None, *, config: CNNConfig | None = None,
              train_config: TrainConfig | None = None, device: str | torch.device | None = None,
              progress: bool = True, checkpoint_dir: str | Path | None = None) -> TrainResult:
    """Train the CNN on `train`; keep the epoch with the best validation accuracy (then AUC).

    Deterministic on CPU for a given seed and thread count. `val` None: the last epoch is kept.
    checkpoint_dir: write a checkpoint there after every epoch, and continue from the one found
    there (methods/cnn_checkpoint.py; one from other settings or data is refused: ResumeRefused);
    a resumed run ends with the same weights as an uninterrupted one.
    """
    config = config or CNNConfig()
    tc = train_config or TrainConfig()
    if tc.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {tc.epochs}")
    if tc.batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {tc.batch_size}")
    if len(train) == 0:
        raise ValueError("the train split is empty")
    images = check_uint8_images(train.images)
    device = _pick_device(device)

    # build: the model, the optimiser and the whole split on the device as uint8 (90k x 3 KB =
    # 276 MB), so that batches are index gathers, never per-image work
    torch.manual_seed(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    model = CifakeCNN(config).to(device)
    model.train()
    x_all = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    y_all = torch.from_numpy(np.asarray(train.labels).astype(np.float32)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    run = _CNNRun(model=model, opt=opt, x_all=x_all, y_all=y_all, config=config, tc=tc, gen=gen,
                  total_steps=math.ceil(len(x_all) / tc.batch_size) * tc.epochs)
    state = TrainState()  # step, epoch, the best (validation accuracy, AUC) so far, history
    best_weights: dict[str, torch.Tensor] | None = None
    best_epoch, train_seconds = 0, 0.0
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    identity = json.loads(json.dumps({"architecture": config.to_dict(), "train": tc.to_dict(),
                                      "data": data_fingerprint(train, val)}))
    resumed = load_checkpoint(folder, model=model, opt=opt, gen=gen, identity=identity) if folder else None
    if resumed is not None:
        state, best_weights = resumed.state, resumed.best_weights
        best_epoch, train_seconds, run.t_start = resumed.best_epoch, resumed.train_seconds, started_at(resumed)
        run.eval_seconds = resumed.eval_seconds
    while state.epoch < tc.epochs:
        # one epoch of optimisation steps (or what the time limit leaves)
        record, out_of_time = _train_epoch(run, state, progress)
        train_seconds += record.pop("_seconds")
        if record["images"] == 0:  # out of time before this epoch's first batch
            if state.history:
                state.history[-1]["stopped_by_time_limit"] = True
            break
        # evaluate; keep the best weights in memory: test accuracy swings between epochs, and
        # only validation may pick the epoch
        if val is None or not len(val):
            best_epoch = state.epoch
        elif _validate(run, val, state, record):
            best_epoch = state.epoch
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        record["best_epoch"] = best_epoch
        state.history.append(record)
        if folder is not None:
            save_checkpoint(folder, model=model, opt=opt, gen=gen, state=state, best_weights=best_weights,
                            best_epoch=best_epoch, train_seconds=train_seconds,
                            elapsed=time.perf_counter() - run.t_start, eval_seconds=run.eval_seconds,
                            identity=identity)
        if progress:
            _report_epoch(record, tc, out_of_time, len(x_all))
        if out_of_time:
            record["stopped_by_time_limit"] = True
            break
    if best_weights is not None:
        model.load_state_dict(best_weights)
    model.eval()
    total_images = sum(r["images"] for r in state.history)
    return TrainResult(model=model, best_epoch=best_epoch, history=state.history,
                       seconds=time.perf_counter() - run.t_start,
                       images_per_second=total_images / max(1e-9, train_seconds))


# ---------------------------------------------------------------------------
# Export and loading (safetensors; no pickle)
# ---------------------------------------------------------------------------


def save_cnn_weights(model: CifakeCNN, path: str | Path) -> Path:
    """Write the model's state dict to `path` (safetensors), the architecture in its metadata."""
    from safetensors.torch import save_file

    from cifake_lib.core.files import atomic_write

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"kind": KIND, "architecture": json.dumps(model.config.to_dict())}
    return atomic_write(path, lambda p: save_file(state, str(p), metadata=meta))


def load_cnn_model(weights: str | Path, config: CNNConfig | dict | None = None,
                   device: str | torch.device | None = None) -> CifakeCNN:
    """A `CifakeCNN` from a safetensors file; the architecture from `config` or the file's metadata.

    A damaged, cut or pickled file, or weights of another shape, is a one-line DamagedWeights
    naming the file (core.weights); a bad architecture a ValueError naming its field."""
    from cifake_lib.core.weights import load_safetensors, load_state, safetensors_metadata

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: CNN weights file not found")
    meta = safetensors_metadata(weights)  # checks the header and the size first
    where = "architecture"
    if config is None:
        if "architecture" not in meta:
            raise ValueError(f"{weights}: no architecture in the file's metadata; pass a config")
        try:
            config = json.loads(meta["architecture"])
        except ValueError:
            raise ValueError(f"{weights}: the architecture in the file's metadata is not JSON") from None
        where = f"{weights}: metadata \"architecture\""
    if isinstance(config, dict):
        config = CNNConfig.from_dict(config, where=where)
    model = CifakeCNN(config)
    load_state(model, load_safetensors(weights), weights)
    return model.to(_pick_device(device)).eval()


class CNNDetector:
    """A trained CNN behind the shared `Detector` interface (kind "cnn")."""

    kind = KIND
    detector = DETECTOR

    def __init__(self, model: CifakeCNN, threshold: float = 0.5, device: str | torch.device | None = None):
        self.device = _pick_device(device)
        self.model = model.to(self.device).eval()
        self.threshold = float(threshold)

    @property
    def config(self) -> CNNConfig:
        return self.model.config

    def predict_logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return predict_logits(self.model, check_uint8_images(images), batch_size, self.device)

    def predict_proba(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 (N, H, W, 3) -> p_fake (N,) float32; any size, resized to the network's input."""
        return _sigmoid(self.predict_logits(images, batch_size))

    def __repr__(self) -> str:
        return f"CNNDetector(threshold={self.threshold:.4f}, config={self.config})"


def load_cnn_detector(run_dir: str | Path, device: str | torch.device | None = None) -> CNNDetector:
    """Load a CNN from a run folder (or its detector.json) written by `run_cnn`."""
    from cifake_lib.evaluation.runs import read_detector_json

    run_dir, meta = read_detector_json(run_dir, KIND)
    weights = meta.get("weights")
    if not weights:
        raise ValueError(f"{run_dir / 'detector.json'}: no \"weights\" entry")
    arch = meta.get("architecture")
    config = CNNConfig.from_dict(arch, where=f'{run_dir / "detector.json"}: "architecture"') if arch is not None else None
    model = load_cnn_model(run_dir / weights, config, device)
    return CNNDetector(model, threshold=float(meta.get("threshold", 0.5)), device=device)


# ---------------------------------------------------------------------------
# The whole stage: train, evaluate, write the run folder
# ---------------------------------------------------------------------------


def run(data: DataConfig | CifakeData, cfg: CnnStageConfig, out: str | os.PathLike) -> RunResult:
    """Train on train (the epoch kept chosen on val), score val and test, write the run folder.

    Writes cnn.safetensors, history.json and, via `runs.write_run`, metrics.json,
    predictions.csv, predictions_val.csv, run.json and detector.json. While training,
    OUT/checkpoints/step-XXXXXXX/ holds the last finished epoch: run the same command again after
    an interruption and training continues from there (with other settings it is refused).
    `.info` holds "best_epoch", "epochs_run", "train_seconds" and "images_per_second".
    """
    from cifake_lib.core.files import write_json
    from cifake_lib.evaluation.runs import write_run

    t0 = time.perf_counter()
    cifake, dcfg = loaded(data, progress=cfg.progress)
    config, tc = cfg.net, cfg.train
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _pick_device(cfg.device)
    from cifake_lib.methods.cost import CostMeter, count_parameters

    meter = CostMeter(device)
    result = train_cnn(cifake.train, cifake.val, config=config, train_config=tc, device=device,
                       progress=cfg.progress, checkpoint_dir=out_dir / CHECKPOINT_DIR)
    n_params = count_parameters(result.model.parameters())
    cost = meter.record(trainable_params=n_params, total_params=n_params,
                        train_images=len(cifake.train) * len(result.history), train_seconds=result.seconds)
    save_cnn_weights(result.model, out_dir / WEIGHTS_FILE)
    write_json(out_dir / HISTORY_FILE, {"best_epoch": result.best_epoch, "epochs": result.history})

    detector = CNNDetector(result.model, device=device)
    p_test = detector.predict_proba(cifake.test.images, tc.eval_batch_size)
    p_val = detector.predict_proba(cifake.val.images, tc.eval_batch_size) if cifake.val is not None else None
    metrics = write_run(
        out_dir, test=cifake.test, p_test=p_test, val=cifake.val, p_val=p_val,
        detector=_detector_meta(config, tc, result.best_epoch, has_val=cifake.val is not None),
        model="cifake-cnn" + ("" if config == CNNConfig.paper() else "-variant"), data=cifake.source,
        seed=tc.seed, args=settings_record("cnn", dcfg, cfg, out=out_dir), seconds=time.perf_counter() - t0,
        n_boot=cfg.n_boot, cost=cost)
    shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)  # the run folder now holds it all
    return RunResult("cnn", out_dir, runs=[out_dir], metrics={DETECTOR: metrics}, seconds=time.perf_counter() - t0,
                     info={"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                           "train_seconds": result.seconds, "images_per_second": result.images_per_second})


def _detector_meta(config: CNNConfig, tc: TrainConfig, best_epoch: int, *, has_val: bool) -> dict[str, Any]:
    """detector.json of a trained CNN: what `load_cnn_detector` reads back, and the record of the recipe."""
    return {
        "kind": KIND,
        "detector": DETECTOR,
        "weights": WEIGHTS_FILE,
        "architecture": config.to_dict(),
        "input": {"size": config.image_size, "scale": "uint8 / 255", "resize": "bicubic, antialias"},
        "train": tc.to_dict(),
        "best_epoch": best_epoch,
        "reference": "Bird & Lotfi, CIFAKE, IEEE Access 2024 (arXiv 2303.14126)",
        "deviations_from_paper": describe_deviations(config, tc, has_val=has_val),
    }


__all__ = [
    "CNNConfig",
    "TrainConfig",
    "CifakeCNN",
    "CNNDetector",
    "TrainResult",
    "describe_deviations",
    "train_cnn",
    "predict_logits",
    "to_input",
    "lr_at_progress",
    "save_cnn_weights",
    "load_cnn_model",
    "load_cnn_detector",
    "run",
]
