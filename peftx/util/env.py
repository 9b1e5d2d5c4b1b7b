"""Facts about where a run executes: precision support, package versions, peak memory."""

from __future__ import annotations

import platform
import resource
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, version

import torch

PACKAGES = ("peftx", "torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "pydantic")


# bf16 autocast pays only where bf16 matrix products run clearly faster than fp32 ones. The AVX512-BF16
# flag alone does not say so: some CPUs that report it multiply bf16 at half their fp32 speed (oneDNN
# has no fast kernel for them), AMX ones at 5-10x. Without AMX the two are timed once per machine.
BF16_MIN_SPEEDUP = 1.3
_PROBE = 512  # square GEMM side: the size of a small model's layers, timed in about 0.1 s


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_matmul_speedup(side: int = _PROBE, repeats: int = 5) -> float:
    """bf16 GEMM throughput over fp32's on this CPU, at the current thread count (best of `repeats`)."""
    import time

    def best(dtype: torch.dtype) -> float:
        a, b = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
        a @ b  # warm-up: kernel selection, packing buffers
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(4):
                a @ b
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(torch.float32) / best(torch.bfloat16)


@cache
def cpu_has_fast_bf16() -> bool:
    """Whether bf16 autocast pays on this CPU: AMX, or AVX512-BF16 with bf16 products measured at least
    BF16_MIN_SPEEDUP x fp32's. The measurement is cached on disk per CPU model and torch version, so all
    processes of a launch (and later runs) make the same choice."""
    flags = _cpu_flags()
    if "amx_bf16" in flags:
        return True
    if "avx512_bf16" not in flags:
        return False
    import json

    from filelock import FileLock

    from peftx.util.cache import cache_root
    from peftx.util.files import write_text_atomic

    key = f"{platform.processor() or platform.machine()}|{_cpu_model()}|torch {torch.__version__}"
    path = cache_root() / "machine.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        if not isinstance(known, dict):
            known = {}
        entry = known.get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("bf16_speedup"), int | float):
            entry = {"bf16_speedup": round(bf16_matmul_speedup(), 3)}
            known[key] = entry
            write_text_atomic(path, json.dumps(known, indent=1))
    return entry["bf16_speedup"] >= BF16_MIN_SPEEDUP


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def resolve_precision(precision: str) -> str:
    """'auto' -> 'bf16' where the hardware multiplies bf16 fast (CUDA with bf16; `cpu_has_fast_bf16`),
    else 'fp32'."""
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
