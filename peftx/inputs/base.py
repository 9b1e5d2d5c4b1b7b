"""Input-embedding adapters turn a batch of task inputs into `inputs_embeds` (batch, seq, hidden).

Symbol inputs arrive framed and padded in one index space shared by every adapter: index 0 is
padding, 1 the family's start token, 2 its end token, and task symbol i is index i + 3 (see
`peftx.training.batching`). An adapter maps those indices to vectors; continuous inputs arrive as `values`.

An input layer also says what it contributes to `peftx export` (`ExportableInput`, `ExportedInput`):
the exported template rebuilds it from plain tensors, without peftx. `exported_input` asks the layer,
and gives the default for layers that do not say.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from peftx.errors import PeftxError
from peftx.families import Family, SpecialIds
from peftx.spec.index_space import NUM_FRAMING
from peftx.spec.input_spec import InputSpec, SymbolVocab

if TYPE_CHECKING:  # input configs import no torch: recipes are read and checked without it
    import torch
    from torch import nn
    from transformers import PreTrainedModel


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
        `attention_mask`) that returns its (batch, seq, hidden) embeddings. A layer that changes the
        sequence's length (patches, digit tokens) returns `(embeddings, attention_mask)` for its new
        positions, and has `max_input_length(positions) -> int`: the longest batch width (framing
        included) whose output fits in `positions` (`peftx.inputs.series_layers`)."""
        raise NotImplementedError

    def trained_roles(self) -> set[str]:
        """Parameter roles this adapter adds to the trainable set."""
        return {"input"} if self.trainable else set()


@dataclass
class ExportedInput:
    """What an input layer contributes to `peftx export`: plain tensors, and the kind of layer the
    exported template (`peftx.export.template`, copied into every export; it knows no peftx class)
    rebuilds from them. The template knows these kinds:

    - "table": tensors {"table": (index, hidden)}; shared index i is embedded as row i.
    - "linear": tensors {"table": (3, hidden), "proj.weight": (hidden, dim), "proj.bias": (hidden,)};
      a VALUE position is embedded as `values @ proj.weight.T + proj.bias`, padding/start/end as
      their row of the table.
    - "intensity_bins": tensors {"table": (3 + levels, hidden)}, settings {"intensity_levels": levels};
      a VALUE position of intensity v (clamped to [0, 1]) is embedded as row 3 + min(floor(v * levels),
      levels - 1), padding/start/end as their row.

    A layer of any other design exports itself as one of these kinds: a layer on symbols as the
    "table" of its output for every index (the default, see `exported_input`), a layer on vectors
    as a "linear" map where it is one. `peftx export` refuses a kind, tensor or setting the template
    does not know.

    Attributes:
        kind: one of the kinds above.
        tensors: name -> tensor; written to task_layers.safetensors as `input.<name>`.
        settings: name -> JSON value; written into task.json's `export` section under its own name.
    """

    kind: str
    tensors: dict[str, torch.Tensor]
    settings: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ExportableInput(Protocol):
    """An input layer that says what it contributes to an export (layers without it get the default
    of `exported_input`)."""

    def export_spec(self, spec: InputSpec) -> ExportedInput:
        """The layer as tensors the exported template applies (called under `torch.no_grad`)."""
        ...


@runtime_checkable
class TokenMappedInput(Protocol):
    """An input layer that embeds each shared index by tokens of the model's own vocabulary
    (`pretrained_vocab`, `pixel_vocab`); `task.json` records the map."""

    def token_map(self) -> list[list[int]]:
        """The vocabulary ids each shared index is embedded from (framing first, then 3 + i); an
        index of several ids is embedded as their mean."""
        ...


def exported_input(layer: nn.Module, spec: InputSpec) -> ExportedInput:
    """What an input layer contributes to an export: its own `export_spec(spec)` where it has one;
    else, on a symbol task, its output for every shared index as a "table", which reproduces any layer
    that embeds each position by its index alone.

    Args:
        layer: the model's input layer (`PeftxModel.input`).
        spec: the task's input spec.

    Raises:
        PeftxError: a layer on continuous inputs that has no `export_spec`.
    """
    if isinstance(layer, ExportableInput):
        return layer.export_spec(spec)
    if isinstance(spec, SymbolVocab):
        import torch  # at call time: see the imports above

        ids = torch.arange(NUM_FRAMING + len(spec.symbols)).unsqueeze(0)  # (1, index)
        table = layer({"input_ids": ids, "attention_mask": torch.ones_like(ids)})[0]  # (index, hidden)
        return ExportedInput("table", {"table": table})
    raise PeftxError(f"input: {type(layer).__name__} has no plain export (it defines no export_spec)")
