"""The CNN's end-of-epoch checkpoint: an interrupted `cifake cnn` continues where it stopped.

The policy is fine-tuning's (methods/checkpoints.py): after every epoch, a folder
`OUT/checkpoints/step-XXXXXXX/` (the optimizer steps done), written as a `.tmp` folder and
renamed into place, holds model.safetensors (the weights, the best epoch's weights, Adam's
moments and the random-number states, so a resumed run draws the same batches, flips and
dropout masks) and state.json (the run's position, history and identity), written last. The
newest one is kept. A crash at any point leaves the previous checkpoint whole; a damaged newest
one is skipped for the one before (`resumable_checkpoint`). Nothing is pickled.

A checkpoint is used only when its identity (architecture, training settings, a fingerprint of
the train/validation data) matches the run being started; otherwise the run is refused with
the message fine-tuning gives (`refuse_changed`), naming each changed setting.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cifake_lib.core.files import follow_umask, read_json, write_json
from cifake_lib.core.weights import load_safetensors
from cifake_lib.methods.checkpoints import (
    CHECKPOINTS,
    STATE_FILE,
    WEIGHTS_FILE,
    _replace_dir,
    checkpoints_in,
    identity_changes,
    refuse_changed,
    resumable_checkpoint,
    step_dir,
)
from cifake_lib.methods.training import TrainState

logger = logging.getLogger("cifake_lib.cnn")

CHECKPOINT_DIR = CHECKPOINTS  # OUT/checkpoints, as fine-tuning's
STATE = STATE_FILE
# Settings that do not change what is trained: they may differ on resume.
RUNTIME_KEYS = ("train.eval_batch_size",)


@dataclass
class Resumed:
    """What a checkpoint restores besides the tensors it loads into the model and optimiser."""

    state: TrainState
    best_weights: dict[str, torch.Tensor] | None
    best_epoch: int
    train_seconds: float
    elapsed: float  # wall seconds of the run so far (a time limit counts them)
    eval_seconds: float  # the last validation pass (a time-limited run keeps that much in reserve)


def save_checkpoint(folder: Path, *, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                    state: TrainState, best_weights: dict[str, torch.Tensor] | None, best_epoch: int,
                    train_seconds: float, elapsed: float, eval_seconds: float, identity: dict[str, Any]) -> Path:
    """Write the end-of-epoch checkpoint `folder/step-XXXXXXX/` (tensors, then state.json, in a .tmp
    folder renamed into place), then drop the older ones. `folder` is OUT/checkpoints."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v for k, v in (best_weights or {}).items()}
    for i, moments in opt.state_dict()["state"].items():
        tensors |= {f"opt.{i}.{name}": torch.as_tensor(v) for name, v in moments.items()}
    tensors["rng.generator"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    device = next(model.parameters()).device
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    tensors["epoch"] = torch.tensor(state.epoch)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    final = step_dir(folder, state.step)
    tmp = final.with_name(final.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp / WEIGHTS_FILE))
    follow_umask(tmp / WEIGHTS_FILE)  # safetensors writes 0600 whatever the umask
    write_json(tmp / STATE, {"identity": identity, "step": state.step, "state": state.to_json(),
                             "history": state.history, "best_epoch": best_epoch, "train_seconds": train_seconds,
                             "elapsed": elapsed, "eval_seconds": eval_seconds})
    _replace_dir(tmp, final)
    for old in checkpoints_in(folder)[:-1]:
        _remove(old)
    for stale in folder.glob("*.tmp"):  # left by a crash mid-write
        _remove(stale)
    return final


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _same_identity(ckpt: Path, saved: dict[str, Any], identity: dict[str, Any]) -> None:
    """Refuse a checkpoint of other settings or data, naming each change (as fine-tuning does)."""
    changes = [c for c in identity_changes(saved.get("identity"), identity)
               if not c.startswith(tuple(k + ":" for k in RUNTIME_KEYS))]
    changes = [c.replace("data: ", "data (the train/validation images' fingerprint): ", 1) for c in changes]
    if changes:
        raise refuse_changed(ckpt, changes, [*RUNTIME_KEYS, "device"])


def load_checkpoint(folder: Path, *, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                    identity: dict[str, Any]) -> Resumed | None:
    """Restore the newest loadable checkpoint under `folder` (OUT/checkpoints) into model, optimiser
    and generator; None when there is none (training starts afresh; a damaged one is named).
    Raises ResumeRefused when it was written with other settings or data."""
    try:
        ckpt = resumable_checkpoint(folder, what="cnn", say=logger.warning, folder=folder)
    except ValueError as e:  # some checkpoints, none loadable
        logger.warning("cnn: %s; training from the start", e)
        return None
    if ckpt is None:
        return None
    saved = read_json(ckpt / STATE)
    _same_identity(ckpt, saved, identity)
    try:
        tensors = load_safetensors(ckpt / WEIGHTS_FILE)
        state = TrainState.from_json(saved["state"], saved.get("history"))
        if int(tensors["epoch"]) != state.epoch:
            raise ValueError(f"{WEIGHTS_FILE} holds epoch {int(tensors['epoch'])}, state.json {state.epoch}")
    except (OSError, ValueError, KeyError) as e:
        logger.warning("cnn: the checkpoint in %s is incomplete or unreadable (%s); training from the start",
                       ckpt, e)
        return None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    opt_state = opt.state_dict()
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            moments.setdefault(int(i), {})[name] = v
    opt.load_state_dict({**opt_state, "state": moments})
    gen.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    device = next(model.parameters()).device
    if "rng.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    logger.info("cnn: resuming after epoch %d from %s", state.epoch, ckpt)
    return Resumed(state=state, best_weights=best, best_epoch=int(saved["best_epoch"]),
                   train_seconds=float(saved["train_seconds"]), elapsed=float(saved["elapsed"]),
                   eval_seconds=float(saved.get("eval_seconds", 0.0)))


def started_at(resumed: Resumed | None) -> float:
    """The perf_counter origin of a run that has already used `resumed.elapsed` seconds."""
    return time.perf_counter() - (resumed.elapsed if resumed else 0.0)


__all__ = ["CHECKPOINT_DIR", "Resumed", "load_checkpoint", "save_checkpoint", "started_at"]
