"""`learned_from_vocab`: a fresh embedding table whose rows start as the pretrained embeddings of the
tokens `pretrained_vocab` would use (the same spelling and multi-token rule).

At initialisation it embeds exactly as `pretrained_vocab` does; the difference is where the vectors
live. Here they are a small table of the adapter's own (role `input`), trained apart from the model's
vocabulary, so an experiment can separate "pretrained values" (this adapter vs `learned`) from "the
shared pretrained table" (this adapter vs `pretrained_vocab` with `trainable: true`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from peftx.inputs.base import InputContext
from peftx.inputs.pretrained_vocab import VocabMapping
from peftx.inputs.registry import INPUTS

if TYPE_CHECKING:
    from torch import nn


class LearnedFromVocabConfig(VocabMapping):
    """Task symbols -> a fresh table initialised from the model's pretrained rows of their tokens."""

    name: Literal["learned_from_vocab"] = "learned_from_vocab"
    trainable: bool = True
    """Train the table (default); false freezes it (then it equals `pretrained_vocab`, frozen)."""

    def build(self, ctx: InputContext) -> nn.Module:
        import torch  # when a model is built: reading a recipe imports no torch (`peftx.inputs.layers`)

        from peftx.inputs.layers import LearnedEmbedding, PretrainedVocabEmbedding

        embed = ctx.backbone.get_input_embeddings()
        with torch.no_grad():
            rows = PretrainedVocabEmbedding(embed, self.index_tokens(ctx)).table()  # (index, hidden)
        return LearnedEmbedding(rows, embed)


INPUTS.register(LearnedFromVocabConfig)
