"""The decoded-array cache: one folder per source, `.npy` arrays plus `meta.json`, written last.

`meta.json` records, for every array, its size in bytes and a checksum of its contents, so a
warm load trusts nothing it has not verified: a file that was changed, cut or corrupted in
place (even with the same size, shape and dtype) is named in a warning and the cache is
rebuilt from the source. The checksum is xxHash's XXH3-128 when the `xxhash` package is
installed (about 20 GB/s) and BLAKE2b-128 from the standard library otherwise (about 1 GB/s:
0.4 s for the full CIFAKE's 369 MB); the algorithm is stored with it.

Writes are all or nothing: arrays first, `meta.json` last (a crash leaves no `meta.json`, so a
half-written cache is never read), and a write that fails (a full or read-only disk) removes
every file it wrote. Arrays are saved without pickle and loaded with `allow_pickle=False`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cifake_lib.core.files import atomic_write, write_json

__all__ = ["CACHE_VERSION", "checksum", "hash_name", "read_arrays", "write_arrays"]

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: per-array checksums in meta.json
META = "meta.json"

try:  # optional: ~20x faster than BLAKE2b; the cache works the same without it
    import xxhash
except ImportError:  # pragma: no cover - depends on the environment
    xxhash = None


def hash_name() -> str:
    """The checksum this installation writes: "xxh3_128" or "blake2b-128"."""
    return "xxh3_128" if xxhash is not None else "blake2b-128"


def checksum(array: np.ndarray, algorithm: str | None = None) -> str:
    """Hex digest of an array's dtype, shape and bytes; None algorithm means `hash_name()`.

    Raises ValueError for an algorithm this installation cannot compute.
    """
    algorithm = algorithm or hash_name()
    if algorithm == "xxh3_128" and xxhash is not None:
        h = xxhash.xxh3_128()
    elif algorithm == "blake2b-128":
        h = hashlib.blake2b(digest_size=16)
    else:
        raise ValueError(f"checksum {algorithm!r} is not available here")
    a = np.ascontiguousarray(array)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a bare path
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def write_arrays(folder: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> bool:
    """Write `arrays` as `<name>.npy` and then `meta.json` (with `meta`, sizes and checksums).

    Returns False, with a warning and nothing left behind, when the disk refuses (full,
    read-only): the cache costs speed next time, never this load.
    """
    written: list[Path] = []
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META).unlink(missing_ok=True)
        algorithm, files = hash_name(), {}
        for name, array in arrays.items():
            path = folder / f"{name}.npy"
            written.append(path)
            atomic_write(path, lambda p, a=array: _save_npy(p, a))
            files[path.name] = {"bytes": path.stat().st_size, "checksum": checksum(array, algorithm)}
        written.append(folder / META)
        write_json(folder / META, {"version": CACHE_VERSION, **meta, "checksum": algorithm, "files": files,
                                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return True
    except OSError as e:
        for path in written:
            path.unlink(missing_ok=True)
        if made:
            try:
                folder.rmdir()
            except OSError:
                pass
        logger.warning("could not write the CIFAKE cache in %s (%s); removed what was written, continuing "
                       "without it", folder, e)
        return False


def _verify(folder: Path, meta: Mapping[str, Any], names: list[str]) -> dict[str, np.ndarray]:
    """Load and check every array; raise ValueError naming the first one that is not as recorded."""
    algorithm, files, out = meta.get("checksum"), meta["files"], {}
    for name in names:
        fname = f"{name}.npy"
        entry = files.get(fname)
        if not isinstance(entry, dict):
            raise ValueError(f"{fname} is not listed in {META}")
        path = folder / fname
        if path.stat().st_size != entry["bytes"]:
            raise ValueError(f"{fname} is {path.stat().st_size:,} bytes, {META} says {entry['bytes']:,}")
        array = np.load(path, allow_pickle=False)
        if checksum(array, algorithm) != entry["checksum"]:
            raise ValueError(f"{fname} does not match its {algorithm} checksum (changed or corrupted)")
        out[name] = array
    return out


def read_arrays(folder: Path, fingerprint: str, names: list[str]) -> tuple[dict[str, np.ndarray], dict] | None:
    """(arrays, meta) when `folder` holds a complete, verified cache of `fingerprint`, else None.

    A cache for another fingerprint or version is simply stale; a damaged one is named in a
    warning. Either way the caller rebuilds it.
    """
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != fingerprint:
        return None
    try:
        return _verify(folder, meta, names), meta
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("the CIFAKE cache in %s is damaged (%s); rebuilding it from the source", folder, e)
        return None
