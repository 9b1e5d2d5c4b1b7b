"""Huge pages for torch's large CPU tensors.

torch advises the kernel to back CPU blocks of 2 MiB or more with transparent huge pages when
`THP_MEM_ALLOC_ENABLE=1`, read once, at its first CPU allocation: so it is set by the `peftx` command
before anything imports torch. A fresh 2 MiB page costs one page fault where 4 KiB pages cost 512,
which is what makes the lean allocator setting (`train.keep_freed_memory`) cheap: each large tensor
of a step is mapped and faulted in anew.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["enable_huge_pages", "kernel_offers_huge_pages"]

_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def kernel_offers_huge_pages() -> bool:
    """Whether the kernel gives transparent huge pages to those who ask (mode `always` or `madvise`)."""
    try:
        return "[never]" not in _THP_MODE.read_text()
    except OSError:  # not Linux, or a kernel without THP
        return False


def enable_huge_pages() -> bool:
    """Set `THP_MEM_ALLOC_ENABLE=1` for this process (and the processes it starts) unless the user set it,
    where the kernel offers transparent huge pages.

    Returns:
        Whether torch will ask for huge pages (the variable is "1" now).
    """
    if kernel_offers_huge_pages():
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
