"""One short probe of the Hugging Face Hub, so that a machine without it fails in seconds.

Without a network, `datasets` and `huggingface_hub` retry each request for about 30 s before
they give up; in offline mode (HF_HUB_OFFLINE=1) they fail at once, or read their local cache.
`offline_unless_hub_reachable()` probes once (name lookup and a TCP connection, a couple of
seconds at most) and, when the Hub cannot be reached, runs its block in offline mode.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

PROBE_TIMEOUT = 2.0  # seconds for the TCP connection; a failed name lookup returns at once


def hub_endpoint() -> tuple[str, int]:
    """(host, port) of the Hub this process talks to ($HF_ENDPOINT, default huggingface.co)."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = PROBE_TIMEOUT) -> bool:
    """True when a TCP connection to the Hub opens within `timeout` seconds."""
    try:
        with socket.create_connection(hub_endpoint(), timeout=timeout):
            return True
    except OSError:  # name not resolved, refused, unreachable, timed out
        return False


def looks_like_path(value: str) -> bool:
    """True for a `--model` value meant as a local path, not a Hub id ("org/name"): it starts
    with ".", "~" or "/", holds a backslash or more than one "/", ends with "/", or its first
    part is an existing local folder (`smoke/nonexistent` beside a folder `smoke`)."""
    if value.startswith((".", "~", "/")) or "\\" in value or value.count("/") > 1 or value.endswith("/"):
        return True
    return "/" in value and os.path.isdir(os.path.expanduser(value.split("/", 1)[0]))


def check_local_folder(value: str, flag: str = "--model") -> None:
    """Fail at once, naming `flag`, when `value` is meant as a local folder (`looks_like_path`)
    that does not exist: no data is loaded and no Hub lookup retried for a typo."""
    if value and looks_like_path(value) and not os.path.exists(os.path.expanduser(value)):
        raise FileNotFoundError(f"{flag} {value}: no such folder (a local folder was meant; a Hub id looks like "
                                "openai/clip-vit-base-patch32)")


def _offline_flags() -> list[tuple[object, str]]:
    """The module-level switches that `huggingface_hub` and `datasets` read at call time."""
    flags = []
    try:
        from huggingface_hub import constants

        flags.append((constants, "HF_HUB_OFFLINE"))
    except ImportError:
        pass
    try:
        from datasets import config

        flags += [(config, "HF_HUB_OFFLINE"), (config, "HF_DATASETS_OFFLINE")]
    except ImportError:
        pass
    return flags


@contextmanager
def offline_unless_hub_reachable(timeout: float = PROBE_TIMEOUT) -> Iterator[bool]:
    """Run the block in Hub offline mode when the Hub cannot be reached; yields whether it did.

    Already offline (HF_HUB_OFFLINE=1): nothing to do, no probe.
    """
    flags = _offline_flags()
    if all(getattr(mod, name, False) for mod, name in flags) or hub_reachable(timeout):
        yield False
        return
    saved = [(mod, name, getattr(mod, name)) for mod, name in flags if hasattr(mod, name)]
    try:
        for mod, name, _ in saved:
            setattr(mod, name, True)
        yield True
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)
