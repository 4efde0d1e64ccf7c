"""The CNN's end-of-epoch checkpoint: an interrupted `cifake cnn` continues where it stopped.

After every epoch, `OUT/checkpoint/` holds epoch-NNNN.safetensors (the weights, the best epoch's
weights, Adam's moments and the random-number states, so a resumed run draws the same batches,
flips and dropout masks) and state.json (the run's position, history, identity and the name of
its tensor file). Each is written atomically, the tensors first, and the previous epoch's tensors
are deleted only after state.json names the new ones: a crash at any point leaves a consistent
pair, at most one epoch old. Nothing is pickled.

A checkpoint is used only when its identity (architecture, training settings, a fingerprint of
the train/validation data) matches the run being started; otherwise training starts afresh.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cifake_lib.core.files import atomic_write, read_json, write_json
from cifake_lib.methods.training import TrainState

logger = logging.getLogger("cifake_lib.cnn")

CHECKPOINT_DIR = "checkpoint"
STATE = "state.json"


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
                    train_seconds: float, elapsed: float, eval_seconds: float, identity: dict[str, Any]) -> None:
    """Write the end-of-epoch checkpoint into `folder`: the tensors, state.json, then drop older tensors."""
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
    folder.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{state.epoch:04d}.safetensors"
    atomic_write(folder / name, lambda p: save_file(tensors, str(p)))
    write_json(folder / STATE, {"identity": identity, "tensors": name, "state": state.to_json(),
                                "history": state.history, "best_epoch": best_epoch, "train_seconds": train_seconds,
                                "elapsed": elapsed, "eval_seconds": eval_seconds})
    for old in folder.glob("epoch-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_checkpoint(folder: Path, *, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                    identity: dict[str, Any]) -> Resumed | None:
    """Restore the checkpoint in `folder` into model, optimiser and generator; None when there is none
    usable (absent, torn, or from other settings or data: then the run starts afresh, with a warning)."""
    if not (folder / STATE).is_file():
        return None
    from safetensors.torch import load_file

    try:
        saved = read_json(folder / STATE)
        if saved.get("identity") != identity:
            logger.warning("cnn: the checkpoint in %s is from other settings or data; training from the start",
                           folder)
            return None
        tensors = load_file(str(folder / saved["tensors"]))
        state = TrainState.from_json(saved["state"], saved.get("history"))
        if int(tensors["epoch"]) != state.epoch:
            raise ValueError(f"{saved['tensors']} holds epoch {int(tensors['epoch'])}, state.json {state.epoch}")
    except (OSError, ValueError, KeyError) as e:
        logger.warning("cnn: the checkpoint in %s is incomplete or unreadable (%s); training from the start",
                       folder, e)
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
    logger.info("cnn: resuming after epoch %d from %s", state.epoch, folder)
    return Resumed(state=state, best_weights=best, best_epoch=int(saved["best_epoch"]),
                   train_seconds=float(saved["train_seconds"]), elapsed=float(saved["elapsed"]),
                   eval_seconds=float(saved.get("eval_seconds", 0.0)))


def started_at(resumed: Resumed | None) -> float:
    """The perf_counter origin of a run that has already used `resumed.elapsed` seconds."""
    return time.perf_counter() - (resumed.elapsed if resumed else 0.0)


__all__ = ["CHECKPOINT_DIR", "Resumed", "load_checkpoint", "save_checkpoint", "started_at"]
