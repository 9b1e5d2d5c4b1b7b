"""`train.keep_freed_memory`: glibc's allocator keeps freed blocks instead of page-faulting them in
again every step."""

from __future__ import annotations

import ctypes
import platform

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Make glibc's malloc serve blocks up to `mmap_threshold` bytes from its heap and keep up to
    `trim_threshold` bytes of free heap, for the rest of the process.

    By default glibc maps large blocks (a step's activations, dropout masks, attention scores) fresh
    from the OS and unmaps them when freed, so every step page-faults its memory in again. torch leaves
    CPU memory to the C library, and allocators that cache (jemalloc, tcmalloc) have to be preloaded
    before the process starts; glibc's own knob, set through ctypes, works from inside it.

    Args:
        mmap_threshold: blocks up to this many bytes come from the heap.
        trim_threshold: free heap kept before any is returned to the OS, in bytes.

    Returns:
        Whether the thresholds were set (False on other C libraries, or where mallopt refuses them).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1 and mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
