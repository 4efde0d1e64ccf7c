"""One safe loader for every weights file: safetensors and `torch.load(weights_only=True)` files.

A damaged, truncated, wrong-format (a pickle renamed `.safetensors`) or wrong-shape file is a
`DamagedWeights` error, one line naming the file and what is wrong (CLI exit 2), never a
traceback from safetensors or torch. Nothing is unpickled: safetensors files are parsed as
safetensors only, and `.pt` files go through `weights_only=True`.

`check_safetensors` reads only the header (8 bytes of length, then JSON) and compares the
tensors' extent with the file's size, so a cut file is found without reading its data; model
folders are checked this way before transformers opens them. torch and safetensors are
imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cifake_lib.core.errors import CifakeError

MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_PICKLE_STARTS = (b"\x80", b"PK\x03\x04")  # a pickle protocol 2+ opcode; torch.save's zip container


class DamagedWeights(CifakeError):
    """A weights file that cannot be loaded as what it claims to be."""


def _what_it_is(head: bytes) -> str:
    if head.startswith(_PICKLE_STARTS):
        return "a pickle or torch.save file, not safetensors (never unpickled here)"
    return "not a safetensors file"


def check_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """The header of a safetensors file ({name: {dtype, shape, data_offsets}}, `__metadata__`),
    after checking that the file holds every byte the header promises. Raises DamagedWeights."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise DamagedWeights(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or (n > size - 8 and head.startswith(_PICKLE_STARTS)):
                raise DamagedWeights(f"{path}: {_what_it_is(head)}")
            if n > size - 8:
                raise DamagedWeights(f"{path}: truncated safetensors file (header of {n:,} bytes, file "
                                     f"{size:,} bytes)")
            raw = f.read(n)
    except FileNotFoundError:
        raise DamagedWeights(f"{path}: weights file not found") from None
    except OSError as e:
        raise DamagedWeights(f"{path}: cannot read the weights file ({e.strerror or e})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError):
        raise DamagedWeights(f"{path}: {_what_it_is(head)} (its header is not safetensors JSON)") from None
    if 8 + n + end > size:
        raise DamagedWeights(f"{path}: truncated safetensors file ({size:,} bytes, its tensors need "
                             f"{8 + n + end:,})")
    return header


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` strings of a checked safetensors file ({} when it has none)."""
    meta = check_safetensors(path).get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, Any]:
    """{name: tensor} of a safetensors file, checked first; DamagedWeights when it is damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors(path)
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise DamagedWeights(f"{path}: damaged safetensors file ({e})") from None


def load_torch_file(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; a pickle that is more than tensors, a cut or
    damaged file, is DamagedWeights naming the file (nothing unsafe is ever unpickled)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise DamagedWeights(f"{path}: file not found")
    if mmap:  # torch maps only its zip container; anything else (a bare pickle) goes to weights_only's refusal
        with open(path, "rb") as f:
            mmap = f.read(4) == b"PK\x03\x04"
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DamagedWeights(f"{path}: refused: not a plain tensor file ({first[:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as e:
        raise DamagedWeights(f"{path}: damaged or truncated tensor file ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None


def load_state(module: Any, state: Mapping[str, Any], path: str | os.PathLike, *, strict: bool = True) -> None:
    """`module.load_state_dict(state)`, a mismatch (missing, unexpected, wrong shape) named with the file."""
    try:
        module.load_state_dict(state, strict=strict)
    except (RuntimeError, KeyError, ValueError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:4] if len(lines) > 1 else lines)[:400]
        raise DamagedWeights(f"{path}: the weights do not fit the model ({detail})") from None


def check_model_folder(folder: str | os.PathLike) -> None:
    """Check every safetensors file of a model folder (header and size) before it is loaded."""
    for f in sorted(Path(folder).glob("*.safetensors")):
        check_safetensors(f)


__all__ = ["DamagedWeights", "check_model_folder", "check_safetensors", "load_safetensors", "load_state",
           "load_torch_file", "safetensors_metadata"]
