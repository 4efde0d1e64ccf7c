"""Where the library's log lines go in a notebook.

Modules log through `logging.getLogger(__name__)`. Without a handler, Python prints warnings to
stderr, which a notebook shows in red like an error, and drops everything below. In a notebook
`show_logs()` prints them as plain output instead, info lines (e.g. the CNN's epochs) included.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

_MARK = "_cifake_notebook_handler"


def show_logs(level: int = logging.INFO, stream: TextIO | None = None) -> logging.Logger:
    """Print the `cifake_lib` loggers' lines at `level` and above to `stream` (default stdout).

    Idempotent: running the cell again does not print every line twice.
    """
    logger = logging.getLogger("cifake_lib")
    for h in [h for h in logger.handlers if getattr(h, _MARK, False)]:
        logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    setattr(handler, _MARK, True)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # printed once, here, not again by a root handler
    return logger
