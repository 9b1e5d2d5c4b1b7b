"""Fast dropout (`train.fast_dropout`): dropout with the same distribution as torch's, from cheaper
random numbers.

CPU dropout draws one Bernoulli number per element, a slow draw for each. The fast path draws 64
random bits per 4 elements and keeps an element where 15 of its 16 bits clear the threshold
(probability quantised to 1/32768), building the mask in integer passes. Attention dropout needs the
attention probabilities, so `scaled_dot_product_attention` with dropout runs as the same math
(softmax(q·kᵀ·scale + mask), dropout, ·v), with the fast dropout.

Memory: on the CPU a mask is kept for backward as the seed of its random bits, and made again there,
not as a tensor as large as the activation it drops. Attention keeps only q, k, v and its masks; its
(batch, heads, queries, keys) scores, probabilities and dropout mask, three such tensors per layer
(114 MB a layer for MiniLM at 32 x 161 tokens), are computed again in backward, one layer at a time:
one more q·kᵀ product and softmax per layer, for about a third less activation memory per step.
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


def _mask_seed(device: torch.device) -> int | None:
    """The seed of a CPU mask's random bits, drawn from torch's generator (so `torch.manual_seed` fixes
    the stream, and a resumed run's restored torch state gives the same masks); None elsewhere."""
    return int(torch.randint(0, 2**62, (1,)).item()) if device.type == "cpu" else None


def _random_words(n: int, device: torch.device, seed: int | None) -> torch.Tensor:
    """`n` uniformly random int64 words (on the CPU: from `seed`, the same words for the same seed)."""
    if device.type != "cpu":
        return torch.empty(n, dtype=torch.int64, device=device).random_(-(2**63), None)
    # By hand because torch's CPU generator (mt19937, one thread) draws 64-bit words at about half the
    # speed of numpy's SFC64.
    return torch.from_numpy(np.random.SFC64(seed).random_raw(n).view(np.int64))


def _keep_mask(shape: torch.Size, cut: int, dtype: torch.dtype, device: torch.device, seed: int | None) -> torch.Tensor:
    """1 where an element is kept (probability 1 - cut/32768), 0 where dropped, in `dtype`."""
    n = math.prod(shape)
    draws = _random_words((n + 3) // 4, device, seed).view(torch.int16)[:n]
    # Kept where the low 15 bits are >= cut: clamp((bits & 0x7fff) - (cut - 1), 0, 1), in place in int16.
    # These are vectorised integer passes; a comparison (bool output), `where` and a bool-to-float cast
    # are each several times slower.
    keep = draws.bitwise_and_(_QUANTUM - 1).sub_(cut - 1).clamp_(0, 1)
    same_width = _SAME_WIDTH_INT.get(dtype)
    if same_width is None:
        return keep.to(dtype).view(shape)
    one = torch.ones((), dtype=dtype).view(same_width).item()  # the bits of 1.0 in `dtype`
    return keep.to(same_width).mul_(one).view(dtype).view(shape)  # 0 * bits = 0.0, 1 * bits = 1.0


class _Mask:
    """A dropout mask that backward can have again: on the CPU rebuilt from its seed (no tensor held
    between forward and backward), elsewhere kept as made."""

    def __init__(self, like: torch.Tensor, p: float) -> None:
        self.cut = round(p * _QUANTUM)  # P(drop) = cut / 32768
        # Kept elements scale by 1 / P(keep): unbiased for the quantised probability. addcmul applies the
        # scale in one pass, in the op's float32 math; folded into a bf16 mask it would round (1/0.9 is
        # 1.109375 in bf16, a 0.16% shrink), and a second pass to scale costs as much as the first.
        self.scale = 1.0 / (1.0 - self.cut / _QUANTUM)
        self.shape, self.dtype, self.device = like.shape, like.dtype, like.device
        self.seed = _mask_seed(like.device)
        self.made: torch.Tensor | None = _keep_mask(self.shape, self.cut, self.dtype, self.device, self.seed)

    def to_save(self) -> list[torch.Tensor]:
        """What backward needs saved (`ctx.save_for_backward`): nothing on the CPU, else the mask."""
        return [self.made] if self.seed is None else []

    def again(self, saved: list[torch.Tensor]) -> torch.Tensor:
        """The same mask, in backward (`saved`: what `to_save` gave, as saved)."""
        return saved[0] if self.seed is None else _keep_mask(self.shape, self.cut, self.dtype, self.device, self.seed)

    def apply(self, x: torch.Tensor, mask: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """`x` masked and scaled (in `x`'s dtype, float32 math); `in_place`: into `x` itself, for a
        temporary of attention's size that nothing else reads (one less such block a layer)."""
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        return torch.addcmul(zero, x, mask, value=self.scale, out=x if in_place else None)


class _FastDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float):
        ctx.mask = mask = _Mask(x, p)
        out = mask.apply(x, mask.made)
        ctx.save_for_backward(*mask.to_save())
        mask.made = None  # backward makes it again (CPU) or reads it from the saved tensors
        return out

    @staticmethod
    def backward(ctx, grad):
        return ctx.mask.apply(grad, ctx.mask.again(list(ctx.saved_tensors))), None


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


def _score_biases(q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> list:
    """The additive biases of the attention scores, in the order they are added (causal, then the mask)."""
    dtype = torch.promote_types(q.dtype, k.dtype) if not torch.is_autocast_enabled(q.device.type) else None
    dtype = dtype or torch.get_autocast_dtype(q.device.type)
    low = torch.finfo(dtype).min  # not -inf: a fully masked row averages instead of NaN
    biases = []
    if is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        biases.append(_bias(causal, dtype, low))
    if attn_mask is not None:
        biases.append(_bias(attn_mask, dtype, low) if attn_mask.dtype == torch.bool else attn_mask)
    return biases


def _probs(q: torch.Tensor, k: torch.Tensor, biases: list, scale: float) -> torch.Tensor:
    """softmax(q·kᵀ·scale + biases): (batch, heads, q_len, kv_len)."""
    scores = (q * scale) @ k.transpose(-2, -1)
    # Masks are added in place as biases of their own (broadcast) shape: `masked_fill` would copy the
    # scores; an in-place add's gradient is the incoming one unchanged.
    for bias in biases:
        scores.add_(bias)
    return torch.softmax(scores, dim=-1)


class _AttentionWithDropout(torch.autograd.Function):
    """softmax(q·kᵀ·scale + biases), fast dropout, ·v; backward computes the probabilities and the mask
    again (see the module docstring) under the autocast state of the forward pass."""

    @staticmethod
    def forward(ctx, q, k, v, p: float, scale: float, *biases):
        probs = _probs(q, k, list(biases), scale)
        ctx.mask = mask = _Mask(probs, p)
        out = mask.apply(probs, mask.made, in_place=True) @ v  # (batch, heads, q_len, dim)
        ctx.scale, ctx.n_biases = scale, len(biases)
        device = q.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(q, k, v, *biases, *mask.to_save())
        mask.made = None
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, *rest = ctx.saved_tensors
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            probs = _probs(q, k, rest[: ctx.n_biases], ctx.scale)
            mask = ctx.mask.again(rest[ctx.n_biases :])
            grad_v = ctx.mask.apply(probs, mask).transpose(-2, -1) @ grad
            grad_probs = ctx.mask.apply((grad @ v.transpose(-2, -1)).to(probs.dtype), mask, in_place=True)
            del mask
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
            del probs, grad_probs
            grad_q = (grad_scores @ k) * ctx.scale
            grad_k = grad_scores.transpose(-2, -1) @ (q * ctx.scale)
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), None, None, *([None] * ctx.n_biases)


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
    biases = _score_biases(q, k, attn_mask, is_causal)
    trains = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if dropout_p > 0.0 and trains and not any(b.requires_grad for b in biases):
        return _AttentionWithDropout.apply(q, k, v, dropout_p, scale, *biases)
    return fast_dropout(_probs(q, k, biases, scale), dropout_p) @ v  # (batch, heads, q_len, dim)


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
