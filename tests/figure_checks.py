"""Check every figure a block of code saves: no text cut at the edges, no legend over a bar."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cifake_lib.viz import plots


@contextmanager
def checked_figures() -> Iterator[dict[str, list[str]]]:
    """{saved path: layout problems} for every figure saved through `plots.save_figure` inside the block.

    Every module saves through that one helper (looked up at call time), so none escapes.
    """
    found: dict[str, list[str]] = {}
    original = plots.save_figure

    def save(fig, path, **kwargs):
        out = original(fig, path, **kwargs)
        found[str(out)] = plots.layout_problems(fig)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "save_figure", save)
        yield found
