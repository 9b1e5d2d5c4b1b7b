"""`MethodExtra`: the base of the modules a method adds outside the backbone (`PeftxModel.extras`).

A leaf module: the model calls extras and the methods make them, so both import it from here.
`peftx export` asks each extra what it contributes (`MethodExtra.export_spec`, an `ExportedExtra`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ExportedExtra:
    """What a method extra contributes to `peftx export`, and whether the exported template
    (`peftx.export.template`, which knows no peftx class) can apply it.

    The template applies one kind:
    - "prompt": tensors {"vectors": (length, hidden)}, settings {"prompt_offset": position}; the
      vectors are inserted at that position of every sequence and the attention mask extended.

    Attributes:
        kind: a kind the template applies, or None: plain torch cannot apply the extra (it acts
            inside the backbone). Its tensors still travel, and the template refuses the export
            with `needs_peftx` (peftx reloads it).
        tensors: name -> tensor; written to task_layers.safetensors as `<kind>.<name>`, or as
            `extras.<role>.<name>` where kind is None.
        settings: name -> JSON value; written into task.json's `export` section under its own name.
        needs_peftx: with kind None, why plain torch cannot apply it; completes "its <role> modules ...".
    """

    kind: str | None
    tensors: dict[str, torch.Tensor]
    settings: dict[str, Any] = field(default_factory=dict)
    needs_peftx: str = "act inside the backbone, which plain transformers cannot"


class MethodExtra(nn.Module):
    """A module a method keeps in `model.extras` (under its budget role, e.g. "prompt", "prefix").

    `PeftxModel.forward` hands the input embeddings through every extra's `transform_inputs` before
    the backbone; `PeftxModel.max_length` leaves room for every extra's `added_positions`. Both
    default to doing nothing (prefixes reach the backbone's attention instead). `peftx export` asks
    `export_spec`, whose default ships the module's state and marks the export as needing peftx.
    """

    added_positions: int = 0
    """Positions this module adds to every sequence (the model's longest input shrinks by as many)."""

    def transform_inputs(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, seq, hidden), (batch, seq) -> the same with `added_positions` more positions
        (default: unchanged)."""
        return embeds, mask

    def export_spec(self) -> ExportedExtra:
        """What this module contributes to an export (called under `torch.no_grad`). Default: its
        state, which only peftx applies."""
        return ExportedExtra(kind=None, tensors=dict(self.state_dict()))


class MethodExtras(nn.ModuleDict):
    """`PeftxModel.extras`: budget role -> `MethodExtra`; refuses any other module."""

    def __setitem__(self, key: str, module: nn.Module) -> None:
        if not isinstance(module, MethodExtra):
            raise TypeError(f"model.extras[{key!r}] must be a MethodExtra, not {type(module).__name__}")
        super().__setitem__(key, module)

    def values(self) -> Iterable[MethodExtra]:
        return super().values()
