"""`learned`: a fresh embedding table for the task's symbols, as the Frozen Pretrained Transformer fed
its tokens (Lu et al. 2021). The table has one row per shared index (padding, start, end, then each
task symbol), so the framing tokens are fresh rows too: nothing of the model's own vocabulary enters.

Rows are drawn from a normal distribution whose standard deviation matches the model's own embedding
table (the inputs arrive at the scale the backbone was trained on); `init_std` overrides it. The table
trains by default (`trainable: false` keeps it at its random values, which are saved with the run).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from peftx.errors import PeftxError
from peftx.inputs.base import InputConfig, InputContext
from peftx.inputs.registry import INPUTS
from peftx.spec.index_space import NUM_FRAMING
from peftx.spec.input_spec import SymbolVocab


def embedding_std(ctx: InputContext) -> float:
    """Standard deviation of the vectors the backbone's own embedding module produces."""
    embed = ctx.backbone.get_input_embeddings()
    scale = float(getattr(embed, "embed_scale", 1.0) or 1.0)  # BART/T5-style scaled embeddings
    if embed.weight.is_meta:  # counting parameters without weights: there are no values to measure
        return scale
    return float(embed.weight.detach().float().std()) * scale


class LearnedEmbedding(nn.Module):
    """A table of its own, looked up by the shared indices; its output takes the backbone's dtype.

    Args:
        weight: (index, hidden) initial rows.
        like: the backbone's embedding module (only its dtype is used; not registered here).
    """

    def __init__(self, weight: torch.Tensor, like: nn.Module) -> None:
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(weight.detach().float().clone(), freeze=False)
        self._like = [like]  # a list hides the module from registration

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.embed(batch["input_ids"])  # (batch, seq, hidden)
        return out.to(self._like[0].weight.dtype)


class LearnedConfig(InputConfig):
    """Task symbols -> rows of a fresh, randomly initialised embedding table."""

    name: Literal["learned"] = "learned"
    trainable: bool = True
    """Train the table (default); false keeps it at its random initial values."""
    init_std: float | None = Field(None, gt=0)
    """Std of the initial rows; None: that of the model's own embedding table."""

    def build(self, ctx: InputContext) -> nn.Module:
        if not isinstance(ctx.spec, SymbolVocab):
            raise PeftxError("input.name: learned needs a task with discrete symbols")
        std = self.init_std if self.init_std is not None else embedding_std(ctx)
        weight = torch.randn(NUM_FRAMING + len(ctx.spec.symbols), ctx.hidden_size) * std
        return LearnedEmbedding(weight, ctx.backbone.get_input_embeddings())


INPUTS.register(LearnedConfig)
