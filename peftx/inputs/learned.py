"""`learned`: a fresh embedding table for the task's symbols, as the Frozen Pretrained Transformer fed
its tokens (Lu et al. 2021). The table has one row per shared index (padding, start, end, then each
task symbol), so the framing tokens are fresh rows too: nothing of the model's own vocabulary enters.

Rows are drawn from a normal distribution whose standard deviation matches the model's own embedding
table (the inputs arrive at the scale the backbone was trained on); `init_std` overrides it. The table
trains by default (`trainable: false` keeps it at its random values, which are saved with the run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from peftx.errors import PeftxError
from peftx.inputs.base import InputConfig, InputContext
from peftx.inputs.registry import INPUTS
from peftx.spec.index_space import NUM_FRAMING
from peftx.spec.input_spec import SymbolVocab

if TYPE_CHECKING:
    from torch import nn


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
        import torch  # when a model is built: reading a recipe imports no torch (`peftx.inputs.layers`)

        from peftx.inputs.layers import LearnedEmbedding, embedding_std

        std = self.init_std if self.init_std is not None else embedding_std(ctx)
        weight = torch.randn(NUM_FRAMING + len(ctx.spec.symbols), ctx.hidden_size) * std
        return LearnedEmbedding(weight, ctx.backbone.get_input_embeddings())


INPUTS.register(LearnedConfig)
