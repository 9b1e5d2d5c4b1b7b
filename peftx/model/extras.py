"""`MethodExtra`: the base of the modules a method adds outside the backbone (`PeftxModel.extras`).

A leaf module: the model calls extras and the methods make them, so both import it from here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class MethodExtra(nn.Module):
    """A module a method keeps in `model.extras` (under its budget role, e.g. "prompt", "prefix").

    `PeftxModel.forward` hands the input embeddings through every extra's `transform_inputs` before
    the backbone; `PeftxModel.max_length` leaves room for every extra's `added_positions`. Both
    default to doing nothing (prefixes reach the backbone's attention instead).
    """

    added_positions: int = 0
    """Positions this module adds to every sequence (the model's longest input shrinks by as many)."""

    def transform_inputs(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, seq, hidden), (batch, seq) -> the same with `added_positions` more positions
        (default: unchanged)."""
        return embeds, mask


class MethodExtras(nn.ModuleDict):
    """`PeftxModel.extras`: budget role -> `MethodExtra`; refuses any other module."""

    def __setitem__(self, key: str, module: nn.Module) -> None:
        if not isinstance(module, MethodExtra):
            raise TypeError(f"model.extras[{key!r}] must be a MethodExtra, not {type(module).__name__}")
        super().__setitem__(key, module)

    def values(self) -> Iterable[MethodExtra]:
        return super().values()
