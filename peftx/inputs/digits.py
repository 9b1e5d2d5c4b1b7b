"""`digits`: each value of a series written as digit tokens of the model's own vocabulary and embedded
by its pretrained token embeddings (LLMTime, Gruver et al., NeurIPS 2023): the time-series form of the
finding that the input layer must reuse the language model's embeddings.

A value v (after `scaling`) is written at fixed precision: a sign token ("+" or "-") and
`integers + decimals` digits of round(|v| x 10^decimals), the decimal point implied (LLMTime drops it
too), so -1.25 with 1 integer digit and 2 decimals is "- 1 2 5". Values beyond the digits saturate
(9.99). A time step's channels follow one another and a "," ends the step, so an example of n steps
and c channels takes n x (c x (1 + integers + decimals) + 1) positions; series are cut to what fits
the backbone's positions (the batching keeps the first steps; a forecasting task keeps the last
`context` steps itself).

`scaling: instance` standardises each example's channels first (mean 0, deviation 1: most values
then need one integer digit); forecasting models already do so. `table: learned` embeds the same
tokens by a fresh random table instead (the ablation: are the pretrained vectors what helps?).
`trainable: true` trains the table: the backbone's whole token embedding table (role
`token_embedding`) or the learned one (role `input`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from peftx.errors import PeftxError
from peftx.inputs.base import InputConfig, InputContext
from peftx.inputs.pretrained_vocab import framing_tokens, spell_tokens
from peftx.inputs.registry import INPUTS
from peftx.spec.index_space import NUM_FRAMING
from peftx.spec.input_spec import ContinuousSpec

if TYPE_CHECKING:
    from torch import nn


class DigitsConfig(InputConfig):
    """Series values -> sign and digit tokens -> the model's own (or a learned) token embeddings (LLMTime)."""

    name: Literal["digits"] = "digits"
    integers: int = Field(1, ge=1, le=6)
    """Digits before the implied decimal point."""
    decimals: int = Field(2, ge=0, le=6)
    """Digits after it (precision)."""
    scaling: Literal["instance", "none"] = "instance"
    """instance: standardise each example's channels (mean 0, deviation 1); none: values as they are."""
    table: Literal["pretrained", "learned"] = "pretrained"
    """pretrained: the model's own embeddings of the tokens; learned: a fresh random table."""
    pieces: Literal["mean", "first", "error"] = "mean"
    """A symbol the tokenizer splits into several tokens: mean of their embeddings, the first, or refuse."""

    @model_validator(mode="after")
    def _check(self) -> DigitsConfig:
        if self.align is not None:
            raise ValueError("align: digits changes the sequence's length; input alignment does not support it")
        return self

    def build(self, ctx: InputContext) -> nn.Module:
        if not isinstance(ctx.spec, ContinuousSpec):
            raise PeftxError("input.name: digits needs a task with continuous inputs (e.g. timeseries)")
        import torch  # when a model is built: reading a recipe imports no torch

        from peftx.inputs.layers import LearnedEmbedding, PretrainedVocabEmbedding, embedding_std
        from peftx.inputs.series_layers import DIGIT_SYMBOLS, DigitsInput

        embed = ctx.backbone.get_input_embeddings()
        if self.table == "pretrained":
            lookup: nn.Module = PretrainedVocabEmbedding(
                embed, framing_tokens(ctx) + spell_tokens(ctx, list(DIGIT_SYMBOLS), self.pieces)
            )
        else:
            rows = torch.randn(NUM_FRAMING + len(DIGIT_SYMBOLS), ctx.hidden_size) * embedding_std(ctx)
            lookup = LearnedEmbedding(rows, embed)
        frame = (ctx.specials.bos is not None, ctx.specials.eos is not None)
        return DigitsInput(ctx.spec.dim, self.integers, self.decimals, self.scaling, lookup, frame)

    def trained_roles(self) -> set[str]:
        if not self.trainable:
            return set()
        return {"token_embedding"} if self.table == "pretrained" else {"input"}


INPUTS.register(DigitsConfig)
