"""Small file helpers shared by every stage: atomic writes, JSON, CSV."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cifake_lib.core.errors import NoSpaceLeft, is_disk_full

# Environment settings live in core/settings.py; imported here for code written against this module.
from cifake_lib.core.settings import (  # noqa: E402,F401
    DEFAULT_HF_REPO,
    DEFAULT_KAGGLE_HANDLE,
    cache_root,
    default_data_source,
    smoke_mode,
)


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux /proc).

    Changing it to read it (os.umask twice) would race with threads creating files meanwhile.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> Path:
    """Give a file (or every file under a folder) the mode a new file gets under the umask.

    For writers that create private 0600 files whatever the umask (safetensors' `save_file`,
    hence `save_pretrained`, and mkstemp).
    """
    path = Path(path)
    mode = 0o666 & ~current_umask()
    for f in (path.rglob("*") if path.is_dir() else [path]):
        if f.is_file() and not f.is_symlink():
            os.chmod(f, mode)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_path)`, then rename onto `path`, so readers never see a partial file.

    The temporary file lives in the same folder (rename is atomic only within one
    file system, which matters when the target is on Google Drive). The file gets the mode any
    new file would get (0644 under umask 022), not mkstemp's private 0600, so colleagues on a
    shared machine can read reports and load models.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except OSError as e:
        if is_disk_full(e) and not isinstance(e, NoSpaceLeft):
            raise NoSpaceLeft(f"no space left writing {path}; free space and try again") from e
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
              columns: Sequence[str] | None = None, *, if_changed: bool = False) -> Path:
    """Rows as CSV, atomically. Floats keep full precision (repr); None and NaN are empty cells;
    lists (CIs, ranges) become `lo;hi`. Columns default to every key, in first-seen order.
    if_changed: leave the file (and its mtime) alone when it already holds exactly these rows."""
    import io

    columns = list(columns or dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> Any:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, list | tuple):
            return ";".join(repr(float(x)) if isinstance(x, float) else str(x) for x in v)
        return repr(v) if isinstance(v, float) else v

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([cell(r.get(c)) for c in columns])
    text = buf.getvalue()
    path = Path(path)
    if if_changed and path.is_file() and path.read_text(encoding="utf-8") == text:
        return path
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline=""))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths: the usual suspects in metrics and configs.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
