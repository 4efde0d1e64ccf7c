"""The output-folder rule: write only into a folder that is new or that this project wrote.

Every command that writes a folder (`cifake run`, each stage, `report`, `tiny-model`) claims it
first with `claim_output`: a folder that does not exist (or is empty) is created and marked; a
folder this project wrote (its marker, a run.json, a study.json, checkpoints) is used as it is;
any other folder holds someone's own files, and the command refuses unless `--overwrite` is
given. Claiming also proves the folder writable, so a read-only or forbidden `--out` is one
line naming it before any work starts (`write_error`).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cifake_lib.core.errors import CifakeError, NoSpaceLeft, is_disk_full

MARKER = ".cifake"  # an empty file: "this folder was written by cifake_lib"
# Files and folders only this project writes: a folder holding one is ours, marker or not
# (folders written before the marker existed).
OWN_FILES = ("run.json", "study.json", "pipeline.json", "detector.json", "summary.csv", "report.md",
             "checkpoints", "checkpoint")
_IGNORED = (".DS_Store", "Thumbs.db", ".ipynb_checkpoints")  # what file browsers and Jupyter leave


class OutputRefused(CifakeError):
    """The output folder holds files this project did not write."""


def write_error(path: str | os.PathLike, e: OSError) -> CifakeError:
    """One line naming `path` and why it cannot be written (read-only, permission, full disk)."""
    where = e.filename or path
    if is_disk_full(e):
        return NoSpaceLeft(f"no space left writing {where}; free space and try again")
    why = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "operation not permitted", errno.ENOTDIR: "a part of the path is a file, not a folder",
           errno.EEXIST: "a file is in the way"}.get(e.errno, e.strerror or type(e).__name__)
    return CifakeError(f"cannot write {where}: {why}; choose another --out or fix its permissions")


def is_ours(folder: Path) -> bool:
    """True when `folder` carries this project's marker or one of the files only it writes."""
    return any((folder / name).exists() for name in (MARKER, *OWN_FILES))


def foreign_files(folder: Path) -> list[str]:
    """Names in `folder` that neither this project nor a file browser put there (sorted)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in _IGNORED)


def claim_output(out: str | os.PathLike, *, overwrite: bool = False, flag: str = "--out") -> Path:
    """Create or accept `out` as this project's output folder and mark it; refuse a folder of
    someone else's files unless `overwrite`. Raises OutputRefused, or CifakeError for a folder
    that cannot be written."""
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputRefused(f"{flag} {folder}: a file, not a folder; choose a folder")
    if folder.is_dir() and not overwrite and not is_ours(folder):
        others = foreign_files(folder)
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise OutputRefused(f"{flag} {folder}: holds files this project did not write ({shown}); "
                                "choose a new folder, or pass --overwrite to write into it anyway")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).touch()
    except OSError as e:
        raise write_error(folder, e) from None
    return folder


# run.json "args" that change how a run went, not what it is: a re-run may differ in these
RUNTIME_ARGS = frozenset({"out", "progress", "device", "cache", "n_boot", "batch_size", "eval_batch_size", "cpu",
                          "resume", "stop_after", "keep_checkpoints", "log_with", "compile", "figures"})


def _recorded_args(path: Path) -> dict[str, Any] | None:
    """The "args" record of a run.json or metrics.json, None when it has none or cannot be read."""
    try:
        args = json.loads(path.read_text(encoding="utf-8")).get("args")
    except (OSError, ValueError, AttributeError):
        return None
    return args if isinstance(args, dict) else None


def finished_run_conflict(folder: str | os.PathLike, now: Mapping[str, Any]) -> str | None:
    """What differs between the finished run in `folder` (its run.json's, else its metrics.json's
    "args") and the settings record `now` of a command about to write there; None when the folder
    holds no finished run or the same one (a re-run). Paths compare by the folder they name."""
    from cifake_lib.core.paths import resolve_recorded

    folder = Path(folder)
    if not (folder / "metrics.json").is_file():
        return None
    prev = next((args for args in map(_recorded_args, (folder / "run.json", folder / "metrics.json"))
                 if args is not None), None)
    if prev is None:
        return None

    def same(a: Any, b: Any) -> bool:
        if json.dumps(a, default=str) == json.dumps(b, default=str):
            return True
        then = resolve_recorded(a, folder) if isinstance(a, str) and isinstance(b, str) else None
        return then is not None and then == resolve_recorded(b, ".")

    changed = [f"{k}: {prev.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(prev) | set(now), key=str)
               if k not in RUNTIME_ARGS and not same(prev.get(k), now.get(k))]
    if not changed:
        return None
    return (f"holds a finished `cifake {prev.get('command', '?')}` run made with other settings ("
            + "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "") + ")")


__all__ = ["RUNTIME_ARGS", "finished_run_conflict", "MARKER", "OWN_FILES", "OutputRefused", "claim_output", "foreign_files", "is_ours", "write_error"]
