"""Input-embedding adapters turn a batch of task inputs into `inputs_embeds` (batch, seq, hidden).

Symbol inputs arrive framed and padded in one index space shared by every adapter: index 0 is
padding, 1 the family's start token, 2 its end token, and task symbol i is index i + 3 (see
`peftx.data`). An adapter maps those indices to vectors; continuous inputs arrive as `values`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict
from torch import nn
from transformers import PreTrainedModel

from peftx.families import Family, SpecialIds
from peftx.input_spec import InputSpec


@dataclass
class InputContext:
    """What an adapter may use to build itself."""

    family: Family
    backbone: PreTrainedModel
    tokenizer: object | None  # a transformers tokenizer, when the model's vocabulary is available
    specials: SpecialIds
    spec: InputSpec
    hidden_size: int


class InputConfig(BaseModel):
    """Base of every input adapter's recipe section; subclasses declare `name: Literal["..."] = "..."`
    (the registry key) and document each field with a docstring under it (its help text)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    name: str
    trainable: bool = False
    """Train the input layer; for adapters that embed with the model's own tokens (`pretrained_vocab`,
    `pixel_vocab`) that is the whole token embedding table."""

    def build(self, ctx: InputContext) -> nn.Module:
        """The input layer: a module called with a batch (keys `input_ids` or `values`, and
        `attention_mask`) that returns its (batch, seq, hidden) embeddings."""
        raise NotImplementedError

    def trained_roles(self) -> set[str]:
        """Parameter roles this adapter adds to the trainable set."""
        return {"input"} if self.trainable else set()
