"""What the benchmark scripts share: where the CIFAKE data come from, the decode cache, torch threads."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def add_data_argument(ap: argparse.ArgumentParser, *, env: str = "CIFAKE_ARCHIVE",
                      what: str = "the full CIFAKE archive (.tar.gz) or folder") -> None:
    """`--data`, defaulting to $`env`; required when that is unset."""
    default = os.environ.get(env)
    ap.add_argument("--data", default=default, required=default is None,
                    help=f"{what} (default: ${env}{'' if default is None else ', ' + default})")


def add_threads_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for this benchmark (default: torch's own)")


def prepare(threads: int | None = None) -> None:
    """Decoded arrays cached in a folder of the system temp dir (reused between runs, never the
    user's cache unless CIFAKE_CACHE says so); models from the local Hugging Face cache only
    (HF_HUB_OFFLINE, unless set; call this before anything imports transformers); torch's CPU
    threads when asked."""
    os.environ.setdefault("CIFAKE_CACHE", str(Path(tempfile.gettempdir()) / "cifake_bench_cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if threads:
        import torch

        torch.set_num_threads(threads)
