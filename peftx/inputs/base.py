"""Input-embedding adapters turn a batch of task inputs into `inputs_embeds` (batch, seq, hidden).

Symbol inputs arrive framed and padded in one index space shared by every adapter: index 0 is
padding, 1 the family's start token, 2 its end token, and task symbol i is index i + 3 (see
`peftx.data`). An adapter maps those indices to vectors; continuous inputs arrive as `values`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from transformers import PreTrainedModel

from peftx.families import Family, SpecialIds
from peftx.tasks.base import InputSpec


@dataclass
class InputContext:
    """What an adapter may use to build itself."""

    family: Family
    backbone: PreTrainedModel
    tokenizer: object | None  # a transformers tokenizer, when the model's vocabulary is available
    specials: SpecialIds
    spec: InputSpec
    hidden_size: int


class InputAdapter(Protocol):
    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, seq, hidden) embeddings for `batch` (keys `input_ids` or `values`, `attention_mask`)."""
        ...


class InputConfig(BaseModel):
    """Base of every input adapter's recipe section."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    trainable: bool = False
    """Train the input layer. For `pretrained_vocab` this is the model's whole token embedding table."""

    def build(self, ctx: InputContext) -> nn.Module:
        raise NotImplementedError

    def trained_roles(self) -> set[str]:
        """Parameter roles this adapter adds to the trainable set."""
        return {"input"} if self.trainable else set()
