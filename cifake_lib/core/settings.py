"""Settings from the environment and the default sources, in one place.

    CIFAKE_DATA    the default data source (else the Hugging Face mirror, "hf")
    CIFAKE_CACHE   where decoded arrays and feature caches go (else <user cache>/cifake)
    CIFAKE_SMOKE   1/true/yes/on: notebooks and presets run small and fast
    CIFAKE_STUDY   a `cifake run` output folder that notebooks read their runs from
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HF_REPO = "dragonintelligence/CIFAKE-image-dataset"
DEFAULT_KAGGLE_HANDLE = "birdy654/cifake-real-and-ai-generated-synthetic-images"
DEFAULT_MODEL = "openai/clip-vit-base-patch32"  # the CLIP every CLIP stage starts from


def default_data_source() -> str:
    """`$CIFAKE_DATA` when set, else the Hugging Face Hub mirror."""
    return os.environ.get("CIFAKE_DATA") or "hf"


def cache_root() -> Path:
    """`$CIFAKE_CACHE`, else `<user cache>/cifake` (XDG_CACHE_HOME or ~/.cache)."""
    env = os.environ.get("CIFAKE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifake"


def smoke_mode() -> bool:
    """True when `CIFAKE_SMOKE` asks notebooks and presets to run small and fast."""
    return os.environ.get("CIFAKE_SMOKE", "").strip().lower() in {"1", "true", "yes", "on"}


def study_folder() -> Path | None:
    """`$CIFAKE_STUDY`: the `cifake run` output whose runs a notebook reads (None when unset)."""
    env = os.environ.get("CIFAKE_STUDY")
    return Path(env).expanduser() if env else None
