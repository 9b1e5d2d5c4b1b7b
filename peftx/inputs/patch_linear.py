"""`patch_linear`: a series cut into patches along time, each patch projected to the hidden size (One
Fits All / GPT4TS, Zhou et al., NeurIPS 2023; PatchTST, Nie et al., ICLR 2023).

A batch carries one position per time step; the layer turns an example's n steps into
`max(1, (n + stride - patch_len) // stride + 1)` patches (the series padded at its end by repeating
its last step `stride` times, as GPT4TS does) and returns the shorter attention mask with them.
- `channels: mixed`: a patch holds all channels (patch_len x channels numbers), one position each.
- `channels: independent`: each channel's patches are positions of their own, channel after channel,
  through one projection of patch_len numbers shared by all channels, plus a learned vector per
  channel. Channels meet only in attention (GPT4TS runs each channel through the backbone separately;
  here they share one sequence, so the head still sees the whole example).
- `positions: backbone` adds nothing: the backbone's own position embeddings number the patches (as
  GPT4TS uses GPT-2's); `learned` adds a table of the adapter's own (`max_patches` rows).
- `scaling: instance` standardises each example's channels over its steps (mean 0, deviation 1;
  RevIN's normalisation). Forecasting models already do so and undo it on their outputs; for
  classification and regression it drops each series' level and scale, `none` keeps them.
Start/end positions are embedded as `linear` does (`framing`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from peftx.errors import PeftxError
from peftx.inputs.base import InputConfig, InputContext
from peftx.inputs.linear import framing_layer
from peftx.inputs.registry import INPUTS
from peftx.spec.input_spec import ContinuousSpec

if TYPE_CHECKING:
    from torch import nn


class PatchLinearConfig(InputConfig):
    """Series -> patches along time -> Linear to the hidden size (GPT4TS)."""

    name: Literal["patch_linear"] = "patch_linear"
    trainable: bool = True
    """Train the projection (and channel / position vectors); false keeps their random initial values."""
    patch_len: int = Field(16, ge=1)
    """Time steps per patch (GPT4TS: 16 for long series; a few for short ones)."""
    stride: int = Field(8, ge=1)
    """Steps between patch starts; at most patch_len (a larger stride would skip steps)."""
    channels: Literal["mixed", "independent"] = "mixed"
    """mixed: a patch holds every channel; independent: each channel's patches are positions of their own."""
    positions: Literal["backbone", "learned"] = "backbone"
    """backbone: the backbone's own position embeddings; learned: a table of the adapter's own."""
    max_patches: int = Field(512, ge=1)
    """positions: learned: rows of its table (most patches per example)."""
    scaling: Literal["instance", "none"] = "instance"
    """instance: standardise each example's channels (mean 0, deviation 1); none: values as they are."""
    framing: Literal["model", "learned"] = "model"
    """Start/end positions: the model's own special-token embeddings, or two learned vectors."""

    @model_validator(mode="after")
    def _check(self) -> PatchLinearConfig:
        if self.stride > self.patch_len:
            raise ValueError(f"stride: {self.stride} is more than patch_len {self.patch_len} (steps would be skipped)")
        if self.align is not None:
            raise ValueError("align: patch_linear changes the sequence's length; input alignment does not support it")
        return self

    def build(self, ctx: InputContext) -> nn.Module:
        if not isinstance(ctx.spec, ContinuousSpec):
            raise PeftxError("input.name: patch_linear needs a task with continuous inputs (e.g. timeseries)")
        from peftx.inputs.series_layers import PatchInput  # when a model is built: reading a recipe imports no torch

        embed = ctx.backbone.get_input_embeddings()
        framing = framing_layer(ctx, self.framing)
        frame = (ctx.specials.bos is not None, ctx.specials.eos is not None)
        rows = self.max_patches if self.positions == "learned" else None
        independent = self.channels == "independent"
        return PatchInput(
            ctx.spec.dim,
            self.patch_len,
            self.stride,
            independent,
            self.scaling,
            ctx.hidden_size,
            framing,
            embed,
            frame,
            rows,
        )


INPUTS.register(PatchLinearConfig)
