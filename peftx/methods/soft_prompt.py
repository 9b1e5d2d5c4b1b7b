"""`SoftPrompt`: the trained vectors of the `prompt` method, inserted into `inputs_embeds`.

Apart from the method's config (`peftx.methods.prompt`) so that reading a recipe imports no torch.
"""

from __future__ import annotations

import torch
from torch import nn

from peftx.model.extras import ExportedExtra, MethodExtra


class SoftPrompt(MethodExtra):
    """`length` trained vectors inserted at position `offset` of every sequence (mask extended).

    Args:
        init: (length, hidden) initial vectors.
        offset: where they go: 1 behind a start token the family frames sequences with (BERT's
            [CLS], BART's <s>), else 0 (GPT-2, T5).
    """

    def __init__(self, init: torch.Tensor, offset: int) -> None:
        super().__init__()
        self.vectors = nn.Parameter(init.clone())  # (length, hidden)
        self.offset = offset

    @property
    def added_positions(self) -> int:
        """Positions this module adds to every sequence (the model's longest input shrinks by as many)."""
        return self.vectors.shape[0]

    def transform_inputs(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, seq, hidden), (batch, seq) -> (batch, length + seq, hidden), (batch, length + seq)."""
        batch, at = embeds.shape[0], self.offset
        prompt = self.vectors.to(embeds.dtype).expand(batch, -1, -1)  # (batch, length, hidden)
        ones = torch.ones(batch, self.added_positions, dtype=mask.dtype, device=mask.device)
        embeds = torch.cat([embeds[:, :at], prompt, embeds[:, at:]], dim=1)
        mask = torch.cat([mask[:, :at], ones, mask[:, at:]], dim=1)
        return embeds, mask

    def export_spec(self) -> ExportedExtra:
        """Kind "prompt": the vectors and their offset, which the exported template inserts itself."""
        return ExportedExtra(kind="prompt", tensors={"vectors": self.vectors}, settings={"prompt_offset": self.offset})
