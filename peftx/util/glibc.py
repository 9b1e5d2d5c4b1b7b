"""The process's own glibc: the allocator's knobs and statistics (malloc.h) that Python does not expose."""

from __future__ import annotations

import ctypes
import platform
from functools import cache

__all__ = ["glibc"]


@cache
def glibc() -> ctypes.CDLL | None:
    """The C library this process runs on, where it is glibc (Linux); None under any other."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None
