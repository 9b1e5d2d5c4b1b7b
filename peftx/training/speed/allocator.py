"""`train.keep_freed_memory`: where glibc's allocator puts a step's large tensors, and what it keeps of
them once freed.

torch leaves CPU memory to the C library; allocators that cache by size class (jemalloc, tcmalloc)
have to be preloaded before the process starts, so peftx tunes glibc's own, through `mallopt`, from
inside the process. Two choices, measured on the demo (docs/low-memory.md):

- lean (`return_freed_memory`, the default): blocks of 2 MiB or more get a mapping of their own and go
  back to the OS when freed. A fixed threshold keeps the heap to small blocks: glibc's own climbs to
  the size of each mapped block freed (up to 32 MiB), and a heap that serves a step's large tensors
  fragments, its free blocks cut to the shapes of earlier steps (under `keep`, the demo's heap held
  1.3 GB free beside 0.6 GB in use). Each large tensor then page-faults its memory in: with huge pages
  (`THP_MEM_ALLOC_ENABLE=1` before torch allocates, which the `peftx` command sets) that is one fault
  per 2 MiB instead of 512.
  After each step the heap's free pages go back too (`trim_heap`): between its live small blocks the
  demo's heap kept ~290 MB free, under the next step's peak.
- keep (`keep_freed_memory`): everything up to 256 MiB from the heap and up to 1 GiB of it kept free,
  so nothing is faulted in twice, for the fragmented heap's memory.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from peftx.util.glibc import glibc

__all__ = ["keep_freed_memory", "return_freed_memory", "trim_heap"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)
_lean = False  # whether this process runs under `return_freed_memory` (mallopt's settings are per process)


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's `mallopt` of this process, or None under another C library."""
    mallopt = getattr(glibc(), "mallopt", None)
    if mallopt is not None:
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


def return_freed_memory(mmap_threshold: int = 2 << 20) -> bool:
    """Make glibc map every block of at least `mmap_threshold` bytes on its own, and unmap it when freed,
    for the rest of the process (fixed: glibc's own threshold would climb).

    Returns:
        Whether the threshold was set (False on other C libraries, or where mallopt refuses it).
    """
    global _lean
    mallopt = _mallopt()
    _lean = mallopt is not None and mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    return _lean


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Make glibc's malloc serve blocks up to `mmap_threshold` bytes from its heap and keep up to
    `trim_threshold` bytes of free heap, for the rest of the process.

    Returns:
        Whether the thresholds were set (False on other C libraries, or where mallopt refuses them).
    """
    global _lean
    mallopt = _mallopt()
    if mallopt is None:
        return False
    _lean = False
    return mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1 and mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1


def trim_heap() -> None:
    """Under `return_freed_memory`, hand the free pages of glibc's heap back to the OS (`malloc_trim`),
    between steps; elsewhere nothing. A few milliseconds: the heap holds only small blocks then."""
    if _lean:
        glibc().malloc_trim(0)  # _lean: glibc is there
