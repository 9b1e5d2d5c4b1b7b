"""The forecasting model's instance normalisation (RevIN without its learned affine): computed on
tensors inside the model (`peftx.model.task_model`), so it lives apart from the objective declarations
that recipes, task descriptions and run records read without torch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class InstanceNorm:
    """Per-example, per-channel location and scale of a context (RevIN without its learned affine):
    what the forecasting model divides its inputs by and multiplies its outputs with."""

    loc: torch.Tensor  # (batch, 1, channels)
    scale: torch.Tensor  # (batch, 1, channels)
    eps: float = field(default=1e-5, repr=False)

    @classmethod
    def of(cls, values: torch.Tensor, real: torch.Tensor, eps: float = 1e-5) -> InstanceNorm:
        """Statistics of `values` (batch, seq, channels) over the positions where `real` (batch, seq) is
        True."""
        w = real.unsqueeze(-1).to(values.dtype)
        n = w.sum(1, keepdim=True).clamp(min=1)
        loc = (values * w).sum(1, keepdim=True) / n
        var = (((values - loc) * w) ** 2).sum(1, keepdim=True) / n
        return cls(loc, (var + eps).sqrt(), eps)
