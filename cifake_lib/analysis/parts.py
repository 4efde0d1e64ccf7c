"""`Part`: one `## title` of report.md, for the section modules that report.py imports.

It has the attributes of report.py's `Section` (title, blocks, figures, tables; `add`,
`image`), so `assemble_report` and `show_section` take either; defined here so that those
modules need not import report.py (which imports them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Part"]


@dataclass
class Part:
    """Markdown blocks in order, the figures (file name -> Figure) and CSV tables they need."""

    title: str
    blocks: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, tuple[list[dict], Sequence[str] | None]] = field(default_factory=dict)

    def add(self, *markdown: str) -> None:
        self.blocks += list(markdown)

    def image(self, fig: Any, name: str, alt: str) -> None:
        self.figures[name] = fig
        self.blocks.append(f"![{alt}]({name})\n")
