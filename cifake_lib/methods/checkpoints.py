"""Checkpoints of every trained method (fine-tuning and the CNN): one policy.

- Naming: a checkpoint is a folder `OUT/checkpoints/step-XXXXXXX/` (the optimizer steps done),
  written as `step-XXXXXXX.tmp/` and renamed into place (renames only, no symlinks, so it works
  on Google Drive); `state.json` is written last inside it, so a folder without it is incomplete.
- Loading: `resumable_checkpoint` walks back from the newest to the newest complete, loadable
  one (every file parsed, core.weights), and says which it took and why.
- Identity: state.json records what a resumed run must share (settings, data fingerprint);
  `refuse_changed` is the one message when they differ, naming each changed setting.
Tensors are saved as safetensors or plain tensor dicts that `torch.load(weights_only=True)`
reads; nothing is pickled.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifake_lib.core.errors import CifakeError, NoSpaceLeft, is_disk_full, out_of_memory_kind
from cifake_lib.core.files import follow_umask, read_json, write_json
from cifake_lib.core.weights import DamagedWeights, check_safetensors, load_torch_file

CHECKPOINTS = "checkpoints"
HISTORY_FILE = "history.json"
STATE_FILE = "state.json"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCALER_FILE = "scaler.pt"
RNG_FILE = "rng.pt"
_CKPT_RE = re.compile(r"^step-(\d{7,})$")


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN/infinite; the last good checkpoint is kept."""


class ResumeRefused(CifakeError):
    """A checkpoint written with other settings or data than the run being resumed."""


def step_dir(folder: str | os.PathLike, step: int) -> Path:
    """The checkpoint folder of `step` inside a checkpoints folder."""
    return Path(folder) / f"step-{step:07d}"


def checkpoint_dir(out: str | os.PathLike, step: int) -> Path:
    return step_dir(Path(out) / CHECKPOINTS, step)


def checkpoints_in(folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in a checkpoints folder, oldest first (.tmp folders are not complete)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file() and (p / WEIGHTS_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def list_checkpoints(out: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under OUT/checkpoints, oldest first (.tmp folders are not complete)."""
    return checkpoints_in(Path(out) / CHECKPOINTS)


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(out)
    return ckpts[-1] if ckpts else None


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place by renames only (no symlinks: works on Google Drive)."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def rng_state() -> dict[str, Any]:
    """Every RNG as tensors and plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_finite(params: Sequence[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


def save_checkpoint(out: str | os.PathLike, *, clip: nn.Module, optimizer, scaler, state: Mapping[str, Any],
                    history: list[dict[str, Any]], keep: int) -> Path:
    """Write OUT/checkpoints/step-XXXXXXX/ atomically (a .tmp folder, then a rename); keep the newest `keep`."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    if not all_finite(list(clip.parameters())):
        raise TrainingDiverged(f"the weights hold NaN/inf at step {state['step']}: no checkpoint written")
    final = checkpoint_dir(out, int(state["step"]))
    tmp = final.with_name(final.name + ".tmp")
    current = tmp
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()}
        current = tmp / WEIGHTS_FILE
        save_file(weights, str(current), metadata={"format": "pt"})
        follow_umask(current)  # safetensors writes 0600 whatever the umask
        for name, obj in ((OPTIMIZER_FILE, optimizer.state_dict()),
                          (SCALER_FILE, scaler.state_dict() if scaler is not None else None), (RNG_FILE, rng_state())):
            if obj is not None:
                current = tmp / name
                torch.save(obj, current)
        current = tmp / HISTORY_FILE
        write_json(current, history)
        current = tmp / STATE_FILE
        write_json(current, dict(state))  # last inside the folder
        current = final
        _replace_dir(tmp, final)
    except (OSError, RuntimeError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint is worth nothing; free its space
        if out_of_memory_kind(e):
            raise
        raise _write_failed(out, current, e) from None
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in (Path(out) / CHECKPOINTS).glob("*.tmp"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _write_failed(out: str | os.PathLike, path: Path, e: BaseException) -> CifakeError:
    """The error for a checkpoint that could not be written, naming the last complete one."""
    last = latest_checkpoint(out)
    step = f"step {int(_CKPT_RE.match(last.name).group(1))} ({last})" if last else "none yet"
    if is_disk_full(e):
        return NoSpaceLeft(f"no space left writing {path}; last complete checkpoint {step}; free space and "
                           "re-run with --resume")
    return CifakeError(f"could not write {path} ({type(e).__name__}: {e}); last complete checkpoint {step}; "
                       "fix the cause and re-run with --resume")


def load_tensors(path: Path) -> Any:
    """A checkpoint's `.pt` file through `weights_only=True`; damaged or pickled: DamagedWeights."""
    return load_torch_file(path)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be resumed from (a cut, damaged or pickled file), or None when every
    file in it parses. The tensor files are opened memory-mapped: their data is not read."""
    try:
        state = read_json(ckpt / STATE_FILE)
        if not isinstance(state, dict) or "step" not in state:
            return f"{ckpt / STATE_FILE}: no step recorded"
        for f in sorted(ckpt.glob("*.safetensors")):
            check_safetensors(f)
        for name in (OPTIMIZER_FILE, RNG_FILE, SCALER_FILE):
            if (ckpt / name).is_file():
                load_torch_file(ckpt / name, mmap=name == OPTIMIZER_FILE)
        if (ckpt / HISTORY_FILE).is_file():
            read_json(ckpt / HISTORY_FILE)
    except (DamagedWeights, ValueError, OSError) as e:
        return str(e)
    return None


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resumable_checkpoint(out: str | os.PathLike, *, what: str = "finetune", say=_say,
                         folder: str | os.PathLike | None = None) -> Path | None:
    """The newest complete checkpoint of OUT (or of the checkpoints folder `folder`) whose files
    all load; newer damaged ones are named, with why, and so is the one taken. None when there is
    no checkpoint; CifakeError when there are some and none loads."""
    folder = Path(folder) if folder is not None else Path(out) / CHECKPOINTS
    ckpts = checkpoints_in(folder)
    skipped: list[str] = []
    for ckpt in reversed(ckpts):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            if skipped:
                say(f"{what}: resuming from {ckpt.name}, the newest checkpoint that loads; skipped "
                    + "; ".join(skipped))
            return ckpt
        skipped.append(f"{ckpt.name} ({problem})")
    if ckpts:
        raise CifakeError(f"{folder}: no checkpoint loads: " + "; ".join(skipped)
                          + "; delete the folder to start afresh")
    return None


def identity_changes(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """"key: old -> new" for every leaf where two identity records (nested dicts) differ."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(now), key=str):
            out += identity_changes(saved.get(key, "<absent>"), now.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    if json.dumps(saved, sort_keys=True, default=str) == json.dumps(now, sort_keys=True, default=str):
        return []
    return [f"{prefix[:-1]}: {saved!r} -> {now!r}"]


def refuse_changed(ckpt: Path, changes: Sequence[str], may_change: Sequence[str]) -> ResumeRefused:
    """The one message (fine-tuning and the CNN) for a checkpoint of other settings or data."""
    return ResumeRefused(f"resume refused: {ckpt} was written with another config:\n  " + "\n  ".join(changes)
                         + "\nOnly " + ", ".join(sorted(may_change)) + " may change on resume; to start afresh, "
                         f"delete {ckpt.parent} or choose another --out.")


def export_model(clip: nn.Module, processor, path: str | os.PathLike) -> Path:
    """save_pretrained (safetensors) of model and processor into `path`, swapped in by renames."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    from cifake_lib.clip.models import quiet_transformers

    with quiet_transformers():  # no "Writing model shards" bar inside the fine-tuning bar
        clip.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    follow_umask(tmp)  # save_pretrained's safetensors file is 0600 whatever the umask
    _replace_dir(tmp, path)
    return path
