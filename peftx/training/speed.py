"""Speed options of the training loop (the `train.*` speed fields of a recipe).

Each option computes the same model as the plain path: exactly up to float rounding, or, for dropout,
with the same distribution from a different stream of random numbers. `tests/test_speed.py` holds each
one to the plain path's loss.

- `fused_lora`: peft's LoRA layer runs the frozen linear layer, then x·Aᵀ, ·Bᵀ, a scale and an add,
  each a pass over the activations; the backward adds five more small matrix products, two of them
  skinny products of a transposed activation that run ~10x below the CPU's matrix peak. The fused layer
  multiplies by the merged weight W + s·B·A (formed in forward and again in backward: r·in·out
  multiply-adds, tiny next to the activations, and no more memory than peft's layer) in one matrix
  product, and its backward takes the LoRA gradients in their fast layout.
- `fast_dropout`: CPU dropout draws one Bernoulli number per element (~7 ns each), which made dropout
  cost ~20% of a MiniLM step. The fast path draws 64 random bits per 4 elements and keeps an element
  where 15 of its 16 bits clear the threshold (probability quantised to 1/32768), building the mask in
  integer passes. Attention dropout needs the attention probabilities, so `scaled_dot_product_attention`
  with dropout runs as the same math (softmax(q·kᵀ·scale + mask), dropout, ·v), with the fast dropout.
- `threads: auto` (`ThreadTuner`): one thread or one per core, whichever is faster right now.
- `keep_freed_memory`: glibc's allocator keeps freed blocks instead of page-faulting them in again.
- `pad_to_multiple`, `compile`: see `peftx.recipe.TrainSection`.
"""

from __future__ import annotations

import ctypes
import math
import platform
import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from types import MethodType
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

if TYPE_CHECKING:
    from peftx.recipe import TrainSection

# ---------------------------------------------------------------------------------------------- LoRA


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matrix products run in: the autocast dtype inside autocast, else the input's."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


class _FusedLoraLinear(torch.autograd.Function):
    """y = x·(W + s·B·A)ᵀ + b with W, b frozen; gradients for x, A and B."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float):
        dt = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dt)  # (tokens, in)
            a, b = lora_a.to(dt), lora_b.to(dt)  # (r, in), (out, r)
            merged = torch.addmm(weight.to(dt), b, a, alpha=scale)  # (out, in)
            y = F.linear(x2, merged, None if bias is None else bias.to(dt))  # (tokens, out)
            xa = x2 @ a.t() if ctx.needs_input_grad[4] else None  # (tokens, r), for B's gradient
        # The merged weight is formed again in backward rather than kept: as much memory as peft's layer
        ctx.save_for_backward(x2, xa, weight, a, b)
        ctx.scale, ctx.in_shape, ctx.compute_dtype = scale, x.shape, dt
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, xa, weight, a, b = ctx.saved_tensors
        s = ctx.scale
        g = grad.reshape(-1, grad.shape[-1]).to(ctx.compute_dtype)  # (tokens, out)
        gx = None
        if ctx.needs_input_grad[0]:
            merged = torch.addmm(weight.to(ctx.compute_dtype), b, a, alpha=s)  # (out, in)
            gx = (g @ merged).view(ctx.in_shape)  # (..., in)
        gb = g @ b  # (tokens, r)
        grad_a = torch.mm(gb.t(), x2).mul_(s) if ctx.needs_input_grad[3] else None  # (r, in)
        # (xa·ᵀg)ᵀ rather than gᵀ·xa: the same numbers, in the layout BLAS multiplies fast
        grad_b = torch.mm(xa.t(), g).t().mul_(s) if ctx.needs_input_grad[4] else None  # (out, r)
        return gx, None, None, grad_a, grad_b, None


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """A frozen linear layer plus its LoRA update, x·(W + scale·B·A)ᵀ + b.

    Args:
        x: (..., in) activations.
        weight: (out, in) frozen weight; bias: (out,) or None, frozen.
        lora_a: (r, in); lora_b: (out, r).

    Returns:
        (..., out), in the autocast dtype inside autocast, else in x's dtype.
    """
    if torch.is_grad_enabled() and (x.requires_grad or lora_a.requires_grad or lora_b.requires_grad):
        return _FusedLoraLinear.apply(x, weight, bias, lora_a, lora_b, scale)
    dt = _compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        merged = torch.addmm(weight.to(dt), lora_b.to(dt), lora_a.to(dt), alpha=scale)  # (out, in)
        return F.linear(x.to(dt), merged, None if bias is None else bias.to(dt))


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Forward of a peft `lora.Linear` through `lora_linear`; peft's own forward where the layer is in a
    state the fused path does not cover (merged, disabled, several adapters, trainable base)."""
    base = self.base_layer
    active = self.active_adapters
    if (
        args
        or kwargs
        or self.merged
        or self.disable_adapters
        or len(active) != 1
        or active[0] not in self.lora_A
        or base.weight.requires_grad
        or (base.bias is not None and base.bias.requires_grad)
    ):
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    weight = base.weight.t() if self.fan_in_fan_out else base.weight  # GPT-2's Conv1D stores (in, out)
    return lora_linear(x, weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name])


def fuse_lora_layers(model: nn.Module) -> int:
    """Route every plain peft LoRA linear layer of `model` through `lora_linear` (parameters and their
    names unchanged). Layers with DoRA, LoRA dropout or a non-linear base keep peft's forward.

    Returns:
        How many layers were fused.
    """
    from peft.tuners.lora.layer import Linear as LoraLinear
    from transformers.pytorch_utils import Conv1D

    count = 0
    for module in model.modules():
        if type(module) is not LoraLinear or not isinstance(module.base_layer, nn.Linear | Conv1D):
            continue
        if any(module.lora_variant.values()) or any(
            not isinstance(d, nn.Identity) for d in module.lora_dropout.values()
        ):
            continue
        module.forward = MethodType(_fused_forward, module)
        count += 1
    return count


# ------------------------------------------------------------------------------------------- dropout


# Integer type of each float type's width: dropout masks are built as integers and reinterpreted.
_SAME_WIDTH_INT = {
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}
_QUANTUM = 32768  # the drop probability is quantised to 1/32768: 15 random bits per element


def _random_words(n: int, device: torch.device) -> torch.Tensor:
    """`n` uniformly random int64 words."""
    if device.type != "cpu":
        return torch.empty(n, dtype=torch.int64, device=device).random_(-(2**63), None)
    # By hand because torch's CPU generator (mt19937, one thread) draws 64-bit words at ~3 ns each, and
    # numpy's SFC64 at ~1.5 ns. Its seed comes from torch's generator, so `torch.manual_seed` still fixes
    # the stream, and a resumed run's restored torch state gives the same masks.
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.from_numpy(np.random.SFC64(seed).random_raw(n).view(np.int64))


def _keep_mask(shape: torch.Size, cut: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1 where an element is kept (probability 1 - cut/32768), 0 where dropped, in `dtype`."""
    n = math.prod(shape)
    draws = _random_words((n + 3) // 4, device).view(torch.int16)[:n]
    # Kept where the low 15 bits are >= cut: clamp((bits & 0x7fff) - (cut - 1), 0, 1), in place in int16.
    # These are vectorised integer passes; a comparison (bool output), `where` and a bool-to-float cast
    # each take ~4x as long.
    keep = draws.bitwise_and_(_QUANTUM - 1).sub_(cut - 1).clamp_(0, 1)
    same_width = _SAME_WIDTH_INT.get(dtype)
    if same_width is None:
        return keep.to(dtype).view(shape)
    one = torch.ones((), dtype=dtype).view(same_width).item()  # the bits of 1.0 in `dtype`
    return keep.to(same_width).mul_(one).view(dtype).view(shape)  # 0 * bits = 0.0, 1 * bits = 1.0


class _FastDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float):
        cut = round(p * _QUANTUM)  # P(drop) = cut / 32768
        mask = _keep_mask(x.shape, cut, x.dtype, x.device)
        # Kept elements scale by 1 / P(keep): unbiased for the quantised probability. addcmul applies the
        # scale in one pass, in the op's float32 math; folded into a bf16 mask it would round (1/0.9 is
        # 1.109375 in bf16, a 0.16% shrink), and a second pass to scale costs as much as the first.
        ctx.scale = 1.0 / (1.0 - cut / _QUANTUM)
        ctx.save_for_backward(mask)
        return torch.addcmul(torch.zeros((), dtype=x.dtype, device=x.device), x, mask, value=ctx.scale)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        return torch.addcmul(zero, grad, mask, value=ctx.scale), None


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout (training mode) with probability `p` quantised to 1/32768."""
    if p <= 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    return _FastDropout.apply(x, p)


def _bias(allowed: torch.Tensor, dtype: torch.dtype, low: float) -> torch.Tensor:
    """An additive mask: 0 where `allowed`, `low` elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, low)


def attention_with_dropout(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """`scaled_dot_product_attention`'s math path with `fast_dropout` on the probabilities.

    q: (batch, heads, q_len, dim); k, v: (batch, heads, kv_len, dim); attn_mask: boolean (True: attend)
    or additive, broadcastable to (batch, heads, q_len, kv_len).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)  # (batch, heads, q_len, kv_len)
    low = torch.finfo(scores.dtype).min  # not -inf: a fully masked row averages instead of NaN
    # Masks are added in place as biases of their own (broadcast) shape: `masked_fill` would copy the
    # scores once forward and once backward (two of a step's largest copies at 512 tokens), while an
    # in-place add's gradient is the incoming one unchanged.
    if is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores.add_(_bias(causal, scores.dtype, low))
    if attn_mask is not None:
        scores.add_(_bias(attn_mask, scores.dtype, low) if attn_mask.dtype == torch.bool else attn_mask)
    probs = torch.softmax(scores, dim=-1)
    return fast_dropout(probs, dropout_p) @ v  # (batch, heads, q_len, dim)


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class FastDropout(TorchFunctionMode):
    """Inside this context, training-mode dropout (`nn.Dropout`, `F.dropout`, and attention dropout in
    `F.scaled_dot_product_attention`) uses `fast_dropout`; every other call passes through."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            bound = dict(zip(("input", "p", "training", "inplace"), args), **kwargs)
            if bound.get("training", True) and torch.is_grad_enabled():
                return fast_dropout(bound["input"], bound.get("p", 0.5))
        elif func is F.scaled_dot_product_attention:
            bound = dict(zip(_SDPA_ARGS, args), **kwargs)
            if bound.get("dropout_p", 0.0) > 0.0 and not bound.get("enable_gqa", False):
                return attention_with_dropout(
                    bound["query"],
                    bound["key"],
                    bound["value"],
                    bound.get("attn_mask"),
                    bound["dropout_p"],
                    bound.get("is_causal", False),
                    bound.get("scale"),
                )
        return func(*args, **kwargs)


# ------------------------------------------------------------------------------------------- threads


class ThreadTuner:
    """`threads: auto`: pick the faster of all cores or one thread, and check again now and then.

    On a machine shared with other jobs, one thread can beat a thread per core by 2x: each
    multithreaded op waits for its slowest thread, and another job may have preempted it. From step 1
    on (step 0 pays one-time costs), every `every` steps the loop runs `probe` steps with each
    candidate, then keeps the one with less time per padded token (median). Any other `threads`
    setting (a number, or None for PyTorch's default) makes the tuner inert.

    Thread counts change the order of floating-point sums, so `auto` runs are reproducible to float
    rounding only.
    """

    def __init__(self, threads: int | str | None, every: int = 100, probe: int = 3) -> None:
        cores = torch.get_num_threads()
        self.candidates = [cores, 1] if threads == "auto" and cores > 1 else []
        self.every, self.probe = every, probe
        self.best = cores
        self.trying: int | None = None  # the candidate being timed this step
        self.last_probe = False
        self.samples: dict[int, list[float]] = {c: [] for c in self.candidates}

    def choose(self, step: int) -> None:
        """Set the thread count for optimizer step `step` (0-based)."""
        if not self.candidates:
            return
        phase = (step - 1) % self.every
        probing = step >= 1 and phase < self.probe * len(self.candidates)
        self.trying = self.candidates[phase // self.probe] if probing else None
        self.last_probe = probing and phase == self.probe * len(self.candidates) - 1
        threads = self.trying if probing else self.best
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    def record(self, seconds: float, work: int) -> None:
        """Report the step just run: its wall time and its padded tokens."""
        if self.trying is None:
            return
        self.samples[self.trying].append(seconds / max(work, 1))
        if self.last_probe:
            self.best = min(self.candidates, key=lambda c: statistics.median(self.samples[c]))
            self.samples = {c: [] for c in self.candidates}


# --------------------------------------------------------------------------------------------- memory

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Make glibc's malloc serve blocks up to `mmap_threshold` bytes from its heap and keep up to
    `trim_threshold` bytes of free heap, for the rest of the process.

    By default glibc maps large blocks (a step's activations, dropout masks, attention scores) fresh
    from the OS and unmaps them when freed, so every step page-faults its memory in again (a process
    timing 50 MiniLM steps of 32 took ~900k minor faults; ~300k with this, and its steps ran ~1.1x
    faster). torch leaves CPU memory to the C library, and allocators that cache (jemalloc, tcmalloc)
    have to be preloaded before the process starts; glibc's own knob, set through ctypes, works from
    inside it.

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


# --------------------------------------------------------------------------------------------- setup


def pad_multiple(cfg: TrainSection, device: torch.device) -> int:
    """Padded batch widths round up to this: 8 on GPUs (tensor-core shapes), 1 on CPUs (rounding only
    adds work: a CPU's matrix units see batch x width rows, already a multiple of the batch)."""
    if cfg.pad_to_multiple is not None:
        return cfg.pad_to_multiple
    return 1 if device.type == "cpu" else 8


def prepare_model(model: nn.Module, cfg: TrainSection, device: torch.device) -> Callable[[], AbstractContextManager]:
    """Apply the speed options that change how `model` computes (in place), and set threads.

    Returns:
        A context factory to wrap each training forward in (fast dropout, or nothing).
    """
    if isinstance(cfg.threads, int):
        torch.set_num_threads(cfg.threads)
    if cfg.keep_freed_memory or (cfg.keep_freed_memory is None and device.type == "cpu"):
        keep_freed_memory()
    if cfg.fused_lora:
        fuse_lora_layers(model)
    if cfg.compile:
        model.compile(dynamic=True)  # inductor fuses dropout and elementwise work itself
        return nullcontext
    fast = cfg.fast_dropout if cfg.fast_dropout is not None else device.type == "cpu"
    # Checkpointing recomputes the forward during backward, outside this context: torch's dropout
    # replays its masks from the saved random state there, the fast one would draw different masks.
    return FastDropout if fast and not cfg.gradient_checkpointing else nullcontext
