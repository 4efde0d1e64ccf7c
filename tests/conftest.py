"""Shared fixtures.

Real CIFAKE images are found through environment variables (never copied into the repo):
- `CIFAKE_DATA`: a folder in the Kaggle layout (CI points it at the 7,900-image sample);
- `CIFAKE_ARCHIVE`: the full CIFAKE .tar.gz, for full-scale tests.
Tests that need them skip with a reason when they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the network. Set before transformers / huggingface_hub are imported by any
# test module: both read this once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Decoded arrays and feature caches go to a temp folder, never the user's cache."""
    old = os.environ.get("CIFAKE_CACHE")
    os.environ["CIFAKE_CACHE"] = str(tmp_path_factory.mktemp("cifake_cache"))
    yield
    if old is None:
        os.environ.pop("CIFAKE_CACHE", None)
    else:
        os.environ["CIFAKE_CACHE"] = old


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real CIFAKE sample folder (`$CIFAKE_DATA`), or skip."""
    path = os.environ.get("CIFAKE_DATA")
    if not path or not Path(path).is_dir():
        pytest.skip("real CIFAKE sample not available: set CIFAKE_DATA to a folder in the Kaggle layout")
    return Path(path)


@pytest.fixture(scope="session")
def archive_path() -> Path:
    """The full CIFAKE archive (`$CIFAKE_ARCHIVE`), or skip."""
    path = os.environ.get("CIFAKE_ARCHIVE")
    if not path or not Path(path).is_file():
        pytest.skip("full CIFAKE archive not available: set CIFAKE_ARCHIVE to CIFAKE.tar.gz")
    return Path(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny, randomly initialised CLIP written by the library itself (offline)."""
    from cifake_lib.clip.tiny import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip") / "model", seed=0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models are overhead-bound: one thread is as fast and does not fight other jobs.

    Use per module: `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
