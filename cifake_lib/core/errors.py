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


class NoSpaceLeft(CifakeError, OSError):
    """The disk filled up while writing; the message names the file and what to do.

    Also an `OSError`, so code that carries on without an optional file (a cache) still does.
    """


# safetensors: "IoError(Os { code: 28, kind: StorageFull, ... })"
_DISK_FULL_TEXT = ("no space left", "unexpected pos", "file write failed", "disk quota exceeded", "storagefull")
_CPU_OOM_TEXT = ("defaultcpuallocator: can't allocate memory", "cannot allocate memory", "out of memory")


def is_disk_full(e: BaseException) -> bool:
    """True for a write that failed because the disk (or quota) is full.

    `torch.save` reports it from C++ as a RuntimeError ("unexpected pos 611776 vs 611664"),
    without an errno; Python file writes as OSError ENOSPC or EDQUOT.
    """
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e).lower()
    return any(t in text for t in _DISK_FULL_TEXT)


def out_of_memory_kind(e: BaseException) -> str | None:
    """"CUDA" or "CPU" when `e` says the device ran out of memory, else None.

    CUDA raises `torch.OutOfMemoryError`; the CPU allocator a plain RuntimeError ("[enforce fail
    at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"); numpy a MemoryError.
    """
    if type(e).__name__ == "OutOfMemoryError":
        return "CUDA"
    if isinstance(e, MemoryError):
        return "CPU"
    text = str(e).lower()
    if isinstance(e, RuntimeError) and any(t in text for t in _CPU_OOM_TEXT):
        return "CUDA" if "cuda" in text else "CPU"
    return None
