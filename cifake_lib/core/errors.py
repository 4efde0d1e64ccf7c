"""Errors meant for the user.

A `CifakeError` carries a message that names the file or argument, says what is wrong and
what to do. The command line prints it as `cifake <command>: error: <message>` and exits 2;
a notebook shows it as an ordinary exception. Library code raises these (or a subclass)
for bad input instead of letting a low-level error escape without context.
"""

from __future__ import annotations


class CifakeError(ValueError):
    """Bad input or an unrecoverable condition, explained for the user (CLI exit status 2).

    A `ValueError` so that callers written against the earlier `ValueError`s keep working.
    """
