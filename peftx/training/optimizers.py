"""Optimizers by recipe name (`train.optimizer`): torch's AdamW and bitsandbytes' 8-bit optimizers,
whose per-parameter state is stored in 8 bits with block-wise scales (2 bytes per trained parameter
for Adam's two moments instead of 8; tensors under 4096 elements keep 32-bit state)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from peftx.recipe import TrainSection

# name -> (module, class); imported on first use so bitsandbytes loads only when asked for.
OPTIMIZERS = {
    "adamw": ("torch.optim", "AdamW"),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit"),
    "lion8bit": ("bitsandbytes.optim", "Lion8bit"),
    "paged_adamw8bit": ("bitsandbytes.optim", "PagedAdamW8bit"),
}


def build_optimizer(name: str, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """An optimizer of the named kind over parameter groups.

    Args:
        name: a key of `OPTIMIZERS` (the recipe schema admits only those).
        groups: torch parameter groups (each with its own `weight_decay`).
        lr: the peak learning rate.
    """
    module, cls = OPTIMIZERS[name]
    optimizer_cls = getattr(importlib.import_module(module), cls)
    return optimizer_cls(groups, lr=lr)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in an optimizer's state tensors (moments, 8-bit codes and their scales)."""
    seen: set[int] = set()
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                total += value.numel() * value.element_size()
    return total


def make_optimizer(model: torch.nn.Module, cfg: TrainSection) -> torch.optim.Optimizer:
    """`train.optimizer` (AdamW or an 8-bit one); matrices decay, biases, norms and 1-d vectors do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return build_optimizer(cfg.optimizer, [g for g in groups if g["params"]], cfg.lr)
