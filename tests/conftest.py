"""Shared fixtures.

Real CIFAKE images are found through environment variables (never copied into the repo):
- `CIFAKE_DATA`: a folder of CIFAKE in the Kaggle layout, the whole dataset or a sample of it (CI points it
  at a 7,900-image sample, whose known contents `cifake_sample` tests check);
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


SAMPLE_IMAGES = 7_900  # the sample CI uses: 2,950 + 2,950 train, 1,000 + 1,000 test


@pytest.fixture(scope="session")
def cifake_sample(sample_dir) -> Path:
    """`$CIFAKE_DATA` when it is the 7,900-image sample whose known contents (counts, duplicate pairs) a
    few tests check; skip when it is another CIFAKE folder (e.g. the whole dataset), which every other
    test takes."""
    n = sum(1 for split in ("train", "test") for label in ("REAL", "FAKE")
            for p in (sample_dir / split / label).iterdir() if p.is_file()) \
        if all((sample_dir / s / lab).is_dir() for s in ("train", "test") for lab in ("REAL", "FAKE")) else -1
    if n != SAMPLE_IMAGES:
        pytest.skip(f"checks the {SAMPLE_IMAGES:,}-image sample's known contents; CIFAKE_DATA={sample_dir} is "
                    "another CIFAKE folder")
    return sample_dir


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
