"""Input-embedding adapters turn a batch of task inputs into `inputs_embeds` (batch, seq, hidden).

Symbol inputs arrive framed and padded in one index space shared by every adapter: index 0 is
padding, 1 the family's start token, 2 its end token, and task symbol i is index i + 3 (see
`peftx.training.batching`). An adapter maps those indices to vectors; continuous inputs arrive as `values`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from transformers import PreTrainedModel

from peftx.families import Family, SpecialIds
from peftx.spec.input_spec import InputSpec


@dataclass
class InputContext:
    """What an adapter may use to build itself."""

    family: Family
    backbone: PreTrainedModel
    tokenizer: object | None  # a transformers tokenizer, when the model's vocabulary is available
    specials: SpecialIds
    spec: InputSpec
    hidden_size: int


class AlignConfig(BaseModel):
    """`input.align`: train the input layer alone, before training proper, so that the distribution of
    its output vectors comes close to a reference distribution of the same pretrained model (ORCA's
    "align, then refine", Shen et al. 2023)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    objective: Literal["mmd", "sinkhorn", "moments"] = "mmd"
    """mmd: Gaussian-kernel maximum mean discrepancy (several bandwidths around the median distance);
    sinkhorn: entropic optimal transport (geomloss; `pip install 'peftx[align]'`); moments: the squared
    distance between the two means plus that between the per-dimension standard deviations."""
    steps: int = Field(200, ge=1)
    """Alignment steps (Adam on the input layer's parameters only)."""
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    """Adam's learning rate for the alignment steps."""
    batch_size: int = Field(32, ge=1)
    """Training examples embedded per step."""
    points: int = Field(1024, ge=16)
    """Most vectors compared per side and step (sampled from the batch's positions and the reference)."""
    reference: Literal["vocab", "text"] = "vocab"
    """vocab: the model's own token-embedding table (no data needed); text: the model's embeddings of
    the tokens of a text file (`text`)."""
    text: Path | None = None
    """With reference: text, a UTF-8 text file (one passage per line), tokenized by the model's tokenizer."""
    features: Literal["embeddings", "pooled"] = "embeddings"
    """embeddings: one vector per position; pooled: one per sequence, the mean over its positions (as
    ORCA compares them). vocab has no sequences, so it takes embeddings."""
    blur: float = Field(0.05, gt=0, allow_inf_nan=False)
    """sinkhorn only: the entropic blur (geomloss' length scale; smaller is closer to exact transport)."""

    @model_validator(mode="after")
    def _check(self) -> AlignConfig:
        if (self.reference == "text") != (self.text is not None):
            raise ValueError("text: give a text file exactly when reference is text")
        if self.reference == "vocab" and self.features == "pooled":
            raise ValueError("features: pooled needs sequences; reference vocab has tokens only (use embeddings)")
        if self.objective == "sinkhorn" and importlib.util.find_spec("geomloss") is None:
            raise ValueError("objective: sinkhorn needs geomloss (pip install 'peftx[align]')")
        return self


class InputConfig(BaseModel):
    """Base of every input adapter's recipe section; subclasses declare `name: Literal["..."] = "..."`
    (the registry key) and document each field with a docstring under it (its help text)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    name: str
    trainable: bool = False
    """Train the input layer; for adapters that embed with the model's own tokens (`pretrained_vocab`,
    `pixel_vocab`) that is the whole token embedding table."""
    align: AlignConfig | None = None
    """Align the input layer with the pretrained model before training (see `AlignConfig`); needs a
    trainable input layer. null: no alignment stage."""

    @model_validator(mode="after")
    def _align_needs_training(self) -> InputConfig:
        if self.align is not None and not self.trainable:
            raise ValueError("align: only a trainable input layer can be aligned (set trainable: true)")
        return self

    def build(self, ctx: InputContext) -> nn.Module:
        """The input layer: a module called with a batch (keys `input_ids` or `values`, and
        `attention_mask`) that returns its (batch, seq, hidden) embeddings."""
        raise NotImplementedError

    def trained_roles(self) -> set[str]:
        """Parameter roles this adapter adds to the trainable set."""
        return {"input"} if self.trainable else set()
