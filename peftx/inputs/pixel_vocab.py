"""`pixel_vocab`: quantised pixel intensities -> the model's own number tokens, so images too enter
through the pretrained embedding table (the paper's input-layer finding, tested on vision).

Each position holds one intensity in [0, 1] (vision task, `mode: pixels`, greyscale). It falls in one
of `levels` equal bins, and bin b is spelled as the number b ("0" ... "255" for 256 levels: the 8-bit
pixel value; "0" ... "9" for 10). Each spelling is tokenised as `pretrained_vocab` does (a number that
is several tokens is embedded by the mean of their embeddings unless `pieces` says otherwise); start
and end positions use the model's own special tokens. Like `pretrained_vocab`, the vectors are the
backbone's token embeddings: `trainable: true` trains that whole table (role `token_embedding`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from peftx.errors import PeftxError
from peftx.inputs.base import InputConfig, InputContext
from peftx.inputs.pretrained_vocab import framing_tokens, spell_tokens
from peftx.inputs.registry import INPUTS
from peftx.spec.input_spec import ContinuousSpec

if TYPE_CHECKING:
    from torch import nn


class PixelVocabConfig(InputConfig):
    """Pixel intensities -> bins -> the model's number tokens and pretrained embeddings."""

    name: Literal["pixel_vocab"] = "pixel_vocab"
    levels: int = Field(256, ge=2, le=10_000)
    """Number of intensity bins; bin b is spelled as the number b."""
    pieces: Literal["mean", "first", "error"] = "mean"
    """A number that is several tokens: mean of their embeddings, the first one, or refuse."""

    def build(self, ctx: InputContext) -> nn.Module:
        spec = ctx.spec
        if not (isinstance(spec, ContinuousSpec) and spec.kind == "intensity" and spec.dim == 1):
            raise PeftxError(
                "input.name: pixel_vocab needs one intensity per position (vision task with mode: pixels, greyscale)"
            )
        from peftx.inputs.layers import PixelVocabEmbedding, PretrainedVocabEmbedding  # torch, when built

        numbers = spell_tokens(ctx, [str(b) for b in range(self.levels)], self.pieces)
        lookup = PretrainedVocabEmbedding(ctx.backbone.get_input_embeddings(), framing_tokens(ctx) + numbers)
        return PixelVocabEmbedding(lookup, self.levels)

    def trained_roles(self) -> set[str]:
        return {"token_embedding"} if self.trainable else set()


INPUTS.register(PixelVocabConfig)
