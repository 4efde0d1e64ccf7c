"""Paths that a run folder records, so that a study can be copied or moved and still load.

A run records the folders it depends on (the CLIP model a detector loads, the run an evaluation
re-scored) relative to itself: a study's runs and its tiny model move together, so
`../../tiny_model` stays right wherever the study goes. A folder on another tree (nothing in
common with the run but the filesystem root, e.g. `/models/clip` beside `/home/me/study`) stays
absolute. `find_moved` reads back records of studies written before that rule (absolute paths
that no longer exist): it looks for the same trailing folders beside the run or one of its
parents.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def portable_path(value: str | os.PathLike, base: str | os.PathLike) -> str:
    """How a run folder `base` records the local path `value`: relative to `base` (POSIX
    separators) when the two share a folder below the filesystem root, else absolute. A value
    that is no existing path (a Hub id, a name like "cifake-cnn") is returned unchanged, and so is
    one already relative to `base`."""
    text = os.fspath(value)
    if not text:
        return text
    base_path = Path(base).expanduser()
    path = Path(text).expanduser()
    if not path.is_absolute() and (base_path / path).exists():
        return Path(text).as_posix()  # already relative to the run folder (a fine-tune's "model")
    if not path.exists():
        return text
    target, root = path.resolve(), base_path.resolve()
    common = Path(os.path.commonpath([target, root]))
    if common == Path(common.anchor):  # nothing in common but "/": moving the run keeps an absolute path right
        return str(target)
    return Path(os.path.relpath(target, root)).as_posix()


def resolve_recorded(value: str, base: str | os.PathLike) -> Path | None:
    """The existing path a record names: absolute, or relative to the run folder `base`; None
    when it names nothing that exists."""
    path = Path(value).expanduser()
    candidate = path if path.is_absolute() else Path(base) / path
    return candidate.resolve() if candidate.exists() else None


def find_moved(value: str, base: str | os.PathLike, *, accept: Callable[[Path], bool] = Path.exists,
               depth: int = 3) -> Path | None:
    """Where a recorded folder went when its study was copied or moved: the last 1..`depth` parts
    of `value` (e.g. `tiny_model`, `smoke/tiny_model`) looked for in `base` and each of its
    parents, nearest first; the first that `accept`s. None when none is found."""
    parts = [p for p in Path(value).parts if p not in ("..", ".", "/", "~") and not p.endswith(":\\")]
    start = Path(base).expanduser().resolve()
    for ancestor in [start, *start.parents]:
        for k in range(1, min(depth, len(parts)) + 1):
            candidate = ancestor.joinpath(*parts[-k:])
            if accept(candidate):
                return candidate
    return None


__all__ = ["portable_path", "resolve_recorded", "find_moved"]
