"""`train.recompute_activations`: a feed-forward activation whose output the fused LoRA layer after it
does not keep for backward.

In a feed-forward block y = W2·act(W1·x) with LoRA on W2, autograd keeps two tensors four times the
hidden width per layer: act's input z = W1·x (for act's derivative) and its output act(z) (the input of
W2's LoRA update, for A's gradient); composite activations such as GPT-2's tanh GELU keep several more.
Together that is about half of what a layer keeps for backward. Here each activation keeps only z and
records which output it made from it; a fused LoRA layer (`lora_fused`) handed that output keeps z too
(the same tensor: no memory) and computes act(z) again in backward, one more element-wise pass. Exact:
the same function of the same tensor under the same autocast state gives the same numbers.

torch's checkpointing cannot do this alone: checkpointing act together with W2 would recompute W2's
product as well, and checkpointing act alone still leaves W2's layer keeping act(z).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import MethodType

import torch
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary

__all__ = ["MadeBy", "made_by", "recompute_activations"]


@dataclass(frozen=True)
class MadeBy:
    """An activation output's recipe: `recompute()` gives the same tensor again from `source`."""

    source: torch.Tensor  # the activation's input, kept by the activation for its own backward
    fn: Callable[[torch.Tensor], torch.Tensor]
    autocast: tuple[str, bool, torch.dtype]
    version: int  # the output's version when made: an in-place change since makes the recipe wrong

    def recompute(self) -> torch.Tensor:
        device, enabled, dtype = self.autocast
        with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            return self.fn(self.source)


_MADE: WeakTensorKeyDictionary = WeakTensorKeyDictionary()  # activation output -> MadeBy


def made_by(x: torch.Tensor) -> MadeBy | None:
    """How `x` can be computed again, if an activation made it and nothing changed it in place since."""
    made = _MADE.get(x)
    return made if made is not None and made.version == x._version else None


def _autocast_state(device: str) -> tuple[str, bool, torch.dtype]:
    return device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)


class _Activation(torch.autograd.Function):
    """act(z), keeping z only; backward differentiates act computed again."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, fn: Callable, autocast: tuple) -> torch.Tensor:
        ctx.fn, ctx.autocast = fn, autocast
        ctx.save_for_backward(z)
        return fn(z)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (z,) = ctx.saved_tensors
        device, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            z1 = z.detach().requires_grad_()
            y = ctx.fn(z1)
        (grad_z,) = torch.autograd.grad(y, z1, grad)
        return grad_z, None, None


def _forward(self: nn.Module, z: torch.Tensor) -> torch.Tensor:
    fn = partial(type(self).forward, self)
    if not (torch.is_grad_enabled() and z.requires_grad):
        return fn(z)
    autocast = _autocast_state(z.device.type)
    y = _Activation.apply(z, fn, autocast)
    _MADE[y] = MadeBy(z, fn, autocast, y._version)
    return y


def _is_activation(module: nn.Module) -> bool:
    """A parameter-free activation module: transformers' (`ACT2FN`) or torch's."""
    kind = type(module).__module__
    return (
        kind in ("transformers.activations", "torch.nn.modules.activation") and next(module.parameters(), None) is None
    )


def recompute_activations(model: nn.Module) -> int:
    """Route every activation module of `model` through `_Activation` (in place; parameters and module
    names unchanged). Returns how many were routed."""
    count = 0
    for module in model.modules():
        if _is_activation(module):
            module.forward = MethodType(_forward, module)
            count += 1
    return count
