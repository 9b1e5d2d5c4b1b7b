"""What a model costs in memory, and gradient checkpointing (the knob that trades time for it).

Peak memory of the process comes from `peftx.util.env.peak_memory`; this module counts where the bytes
of a model go: weights (quantized layers by their codes and scales), gradients, optimizer state; and
what the process holds right now (`process_memory`: resident memory, and what the C allocator or CUDA's
caching allocator keeps), cheap enough to log at every log step.
"""

from __future__ import annotations

import ctypes
from functools import cache

import torch
from torch import nn

from peftx.model.quantization import quantized_modules, quantized_weight_bytes
from peftx.util.glibc import glibc


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute the backbone's layer activations during backward instead of storing them (in training
    mode only; evaluation is unaffected).

    Non-reentrant checkpointing, always: it needs no input that requires grad, and peftx feeds the
    backbone `inputs_embeds` from a usually frozen embedding table, past the embedding hook that
    transformers uses to make the reentrant variant work with frozen inputs.
    """
    backbone = model.backbone
    backbone.config.use_cache = False  # a cache of keys/values is for generation, and clashes with this
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.x
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def model_memory(model: nn.Module) -> dict[str, int]:
    """Bytes in a model's weights and in the gradients of its trainable parameters.

    Returns:
        weight_bytes: every parameter and buffer once (tied weights once), quantized layers by
            codes plus scales; quantized_weight_bytes: the part held by quantized layers;
            gradient_bytes: one gradient per trainable parameter, in its dtype.
    """
    quantized = {id(m.weight): quantized_weight_bytes(m) for m in quantized_modules(model).values()}
    weights = grads = 0
    for p in model.parameters():  # deduplicated by identity
        weights += quantized.get(id(p), p.numel() * p.element_size())
        grads += p.numel() * p.element_size() if p.requires_grad else 0
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    return {"weight_bytes": weights, "quantized_weight_bytes": sum(quantized.values()), "gradient_bytes": grads}


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (malloc.h): ten size_t fields."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@cache
def _mallinfo2():  # noqa: ANN202  (a ctypes function, or None)
    fn = getattr(glibc(), "mallinfo2", None)  # glibc >= 2.33
    if fn is not None:
        fn.restype = _MallInfo2
    return fn


def _status_bytes(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status given in kB (VmRSS, VmHWM), in bytes; {} where there is none."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in keys:
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def process_memory() -> dict[str, int]:
    """What the process holds now (bytes; keys present where the platform tells them).

    Returns:
        rss_bytes: resident memory now; peak_rss_bytes: its high-water mark;
        heap_bytes / heap_free_bytes: glibc's heap (memory from brk, in use or not) and the free part
        it keeps (`train.keep_freed_memory` lets it keep up to 1 GiB); mmap_bytes: blocks glibc maps
        on their own (large tensors, returned to the OS when freed);
        cuda_allocated_bytes / cuda_reserved_bytes: tensors on the GPU, and what torch's caching
        allocator holds for them.
    """
    status = _status_bytes("VmRSS", "VmHWM")
    out = {k: status[s] for k, s in (("rss_bytes", "VmRSS"), ("peak_rss_bytes", "VmHWM")) if s in status}
    mallinfo = _mallinfo2()
    if mallinfo is not None:
        info = mallinfo()
        out |= {"heap_bytes": info.arena, "heap_free_bytes": info.fordblks, "mmap_bytes": info.hblkhd}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out |= {
            "cuda_allocated_bytes": torch.cuda.memory_allocated(),
            "cuda_reserved_bytes": torch.cuda.memory_reserved(),
        }
    return out


def memory_for_log() -> dict[str, int]:
    """What the training log records of `process_memory` at each log step: resident memory and the
    freed memory glibc keeps (where the platform tells them)."""
    memory = process_memory()
    return {k: memory[k] for k in ("rss_bytes", "heap_free_bytes") if k in memory}
