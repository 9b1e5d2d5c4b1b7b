"""Facts about where a run executes: precision support, package versions, peak memory."""

from __future__ import annotations

import platform
import resource
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, version

import torch

PACKAGES = ("peftx", "torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "pydantic")


@cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """'auto' -> 'bf16' where the hardware multiplies bf16 fast, else 'fp32'."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def reset_peak_memory() -> None:
    """Start measuring peaks afresh (for several runs in one process). Linux resets the RSS high-water
    mark through /proc/self/clear_refs; elsewhere the RSS peak stays the process's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _rss_high_water() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux, bytes on macOS


def peak_memory() -> dict[str, int]:
    """Peak process RSS (bytes) since the last `reset_peak_memory`, and peak CUDA memory allocated
    where a GPU is used."""
    out = {"peak_rss_bytes": _rss_high_water()}
    if torch.cuda.is_available():
        out["peak_cuda_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return out
