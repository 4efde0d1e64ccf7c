"""`Section`: one `## title` of report.md: Markdown blocks in order, the figures and CSV tables they need.

Defined here, below report.py, so that the modules that build sections (grid, costs, learning
curves, the study's other sections) need not import report.py, which imports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Section"]


@dataclass
class Section:
    """One `## title` of report.md: Markdown blocks in order, the figures (file name -> Figure) and
    CSV tables (file name -> rows, columns) they need."""

    title: str
    blocks: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, tuple[list[dict], Sequence[str] | None]] = field(default_factory=dict)

    def add(self, *markdown: str) -> None:
        self.blocks += list(markdown)

    def image(self, fig: Any, name: str, alt: str) -> None:
        self.figures[name] = fig
        self.blocks.append(f"![{alt}]({name})\n")
