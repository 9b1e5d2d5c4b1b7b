"""`linear`: continuous inputs (image patches, pixels, features) -> a Linear map to the hidden size,
initialised orthogonally with gain 1.41 and a zero bias, as the Frozen Pretrained Transformer did.

Framing (the family's start/end positions, marked BOS/EOS in the batch's `input_ids`; see
`peftx.training.batching`) is embedded by `framing`:
- `model` (default): the model's own start/end token embeddings ([CLS]/[SEP], <s>/</s>), read from
  its embedding table. They stay the backbone's (frozen unless a method trains `token_embedding`);
  the adapter adds no parameters for them.
- `learned`: two fresh vectors of the adapter's own (role `input`, trained with it).
Padding positions are masked out by the attention mask; their vectors do not matter.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from peftx.errors import PeftxError
from peftx.inputs.base import ExportedInput, InputConfig, InputContext
from peftx.inputs.learned import LearnedEmbedding, embedding_std
from peftx.inputs.pretrained_vocab import PretrainedVocabEmbedding, framing_tokens
from peftx.inputs.registry import INPUTS
from peftx.spec.index_space import EOS, NUM_FRAMING, VALUE
from peftx.spec.input_spec import ContinuousSpec, InputSpec


class LinearInput(nn.Module):
    """Projects each value vector to the hidden size; framing positions take `framing`'s vectors.

    Args:
        dim: length of each input vector.
        hidden: the backbone's hidden size.
        gain: gain of the orthogonal initialisation.
        framing: module mapping {input_ids: PAD/BOS/EOS} to (batch, seq, hidden).
        like: the backbone's embedding module (for the output dtype only; not registered).
    """

    def __init__(self, dim: int, hidden: int, gain: float, framing: nn.Module, like: nn.Module) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        nn.init.orthogonal_(self.proj.weight, gain=gain)
        nn.init.zeros_(self.proj.bias)
        self.framing = framing
        self._like = [like]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]  # (batch, seq)
        dtype = self._like[0].weight.dtype
        x = self.proj(batch["values"].to(self.proj.weight.dtype)).to(dtype)  # (batch, seq, hidden)
        special = self.framing({"input_ids": ids.clamp(max=EOS)}).to(dtype)  # (batch, seq, hidden)
        return torch.where((ids == VALUE).unsqueeze(-1), x, special)

    def export_spec(self, spec: InputSpec) -> ExportedInput:
        """Kind "linear": the projection, and the framing vectors as a (3, hidden) table."""
        framing = torch.arange(NUM_FRAMING).unsqueeze(0)  # (1, 3): PAD, BOS, EOS
        table = self.framing({"input_ids": framing})[0]  # (3, hidden)
        return ExportedInput("linear", {"table": table, "proj.weight": self.proj.weight, "proj.bias": self.proj.bias})


class LinearConfig(InputConfig):
    """Continuous input vectors -> Linear(dim, hidden) with orthogonal initialisation."""

    name: Literal["linear"] = "linear"
    trainable: bool = True
    """Train the projection (default); false keeps its random orthogonal initialisation."""
    gain: float = Field(1.41, gt=0)
    """Gain of the orthogonal initialisation (FPT: 1.41)."""
    framing: Literal["model", "learned"] = "model"
    """Start/end positions: the model's own special-token embeddings, or two learned vectors."""

    def build(self, ctx: InputContext) -> nn.Module:
        if not isinstance(ctx.spec, ContinuousSpec):
            raise PeftxError("input.name: linear needs a task with continuous inputs (e.g. vision)")
        embed = ctx.backbone.get_input_embeddings()
        if self.framing == "model":
            framing: nn.Module = PretrainedVocabEmbedding(embed, framing_tokens(ctx))
        else:
            framing = LearnedEmbedding(torch.randn(NUM_FRAMING, ctx.hidden_size) * embedding_std(ctx), embed)
        return LinearInput(ctx.spec.dim, ctx.hidden_size, self.gain, framing, embed)


INPUTS.register(LinearConfig)
