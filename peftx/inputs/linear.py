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

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from peftx.errors import PeftxError
from peftx.inputs.base import InputConfig, InputContext
from peftx.inputs.pretrained_vocab import framing_tokens
from peftx.inputs.registry import INPUTS
from peftx.spec.index_space import NUM_FRAMING
from peftx.spec.input_spec import ContinuousSpec

if TYPE_CHECKING:
    from torch import nn


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
        from peftx.inputs.layers import LinearInput  # when a model is built: reading a recipe imports no torch

        embed = ctx.backbone.get_input_embeddings()
        return LinearInput(ctx.spec.dim, ctx.hidden_size, self.gain, framing_layer(ctx, self.framing), embed)


def framing_layer(ctx: InputContext, kind: str) -> nn.Module:
    """The start/end positions of a continuous input: the model's own special-token embeddings
    (`model`), or learned vectors at the scale of its embeddings (`learned`)."""
    import torch

    from peftx.inputs.layers import LearnedEmbedding, PretrainedVocabEmbedding, embedding_std

    embed = ctx.backbone.get_input_embeddings()
    if kind == "model":
        return PretrainedVocabEmbedding(embed, framing_tokens(ctx))
    return LearnedEmbedding(torch.randn(NUM_FRAMING, ctx.hidden_size) * embedding_std(ctx), embed)


INPUTS.register(LinearConfig)
