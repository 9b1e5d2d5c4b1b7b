"""Fast dropout (`train.fast_dropout`): dropout with the same distribution as torch's, from cheaper
random numbers.

CPU dropout draws one Bernoulli number per element, a slow draw for each. The fast path draws 64
random bits per 4 elements and keeps an element where 15 of its 16 bits clear the threshold
(probability quantised to 1/32768), building the mask in integer passes. Attention dropout needs the
attention probabilities, so `scaled_dot_product_attention` with dropout runs as the same math
(softmax(q·kᵀ·scale + mask), dropout, ·v), with the fast dropout.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["FastDropout", "attention_with_dropout", "fast_dropout"]

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
    # By hand because torch's CPU generator (mt19937, one thread) draws 64-bit words at about half the
    # speed of numpy's SFC64. Its seed comes from torch's generator, so `torch.manual_seed` still fixes
    # the stream, and a resumed run's restored torch state gives the same masks.
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.from_numpy(np.random.SFC64(seed).random_raw(n).view(np.int64))


def _keep_mask(shape: torch.Size, cut: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1 where an element is kept (probability 1 - cut/32768), 0 where dropped, in `dtype`."""
    n = math.prod(shape)
    draws = _random_words((n + 3) // 4, device).view(torch.int16)[:n]
    # Kept where the low 15 bits are >= cut: clamp((bits & 0x7fff) - (cut - 1), 0, 1), in place in int16.
    # These are vectorised integer passes; a comparison (bool output), `where` and a bool-to-float cast
    # are each several times slower.
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
    """Inverted dropout (training mode) with probability `p` quantised to 1/32768.

    Args:
        x: any tensor; p: the drop probability.

    Returns:
        `x` with dropped elements zeroed and kept ones scaled by 1 / P(keep), in `x`'s dtype.
    """
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

    Args:
        q: (batch, heads, q_len, dim); k, v: (batch, heads, kv_len, dim).
        attn_mask: boolean (True: attend) or additive, broadcastable to (batch, heads, q_len, kv_len).
        dropout_p: dropout on the attention probabilities.
        is_causal: also mask each query's later keys.
        scale: of q·kᵀ; None: 1 / sqrt(dim).

    Returns:
        (batch, heads, q_len, dim).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)  # (batch, heads, q_len, kv_len)
    low = torch.finfo(scores.dtype).min  # not -inf: a fully masked row averages instead of NaN
    # Masks are added in place as biases of their own (broadcast) shape: `masked_fill` would copy the
    # scores once forward and once backward (two of a step's largest copies at long sequences), while
    # an in-place add's gradient is the incoming one unchanged.
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
