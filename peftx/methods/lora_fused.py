"""The fused LoRA layer behind `train.fused_lora`: a frozen linear layer and its LoRA update as one
matrix product.

peft's LoRA layer runs the frozen linear layer, then x·Aᵀ, ·Bᵀ, a scale and an add, each a pass over
the activations; its backward adds five more small matrix products, two of them skinny products of a
transposed activation that run far below the CPU's matrix peak. The fused layer multiplies by the
merged weight W + s·B·A (formed in forward and again in backward: r·in·out multiply-adds, tiny next to
the activations, and no more memory than peft's layer) in one matrix product, and its backward takes
the LoRA gradients in their fast layout. It computes the same model as peft's layer, up to float
rounding.
"""

from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftx.methods.recomputed_activation import made_by

__all__ = ["fuse_lora_layers", "lora_linear"]


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
        # The merged weight is formed again in backward rather than kept: as much memory as peft's layer.
        # An activation's output is made again from the input its activation keeps anyway.
        ctx.made = made_by(x) if ctx.needs_input_grad[3] else None
        ctx.save_for_backward(ctx.made.source if ctx.made else x2, xa, weight, a, b)
        ctx.scale, ctx.in_shape, ctx.compute_dtype = scale, x.shape, dt
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, xa, weight, a, b = ctx.saved_tensors
        if ctx.made is not None:
            x2 = ctx.made.recompute().reshape(-1, ctx.in_shape[-1]).to(ctx.compute_dtype)
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

    Args:
        model: a model holding peft LoRA layers; changed in place.

    Returns:
        How many layers were fused.
    """
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
