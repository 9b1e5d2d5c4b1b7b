"""`layers`: chosen transformer layers train whole; the rest of the body stays frozen."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from peftx.errors import PeftxError
from peftx.methods.base import BudgetKnob, MethodConfig
from peftx.methods.registry import METHODS

if TYPE_CHECKING:
    from peftx.model.task_model import PeftxModel


class LayersMethod(MethodConfig):
    """Unfreeze chosen layers (every parameter located in them); give `layers` or `top`.

    Layers are numbered in forward order over the stacks the pooling runs: BERT and GPT-2 count
    their one stack from 0; T5 and BART count the encoder's layers first (0 .. E-1), then the
    decoder's (E .. E+D-1). With `encoder_mean` pooling the decoder does not run and only encoder
    layers count. Negative indices count from the top (-1: the layer nearest the output), and
    `top: k` is the last k layers of that order, so with `decoder_start` pooling it picks decoder
    layers first. A T5 stack's relative-attention bias table lives in its layer 0 and trains with it.
    """

    name: Literal["layers"] = "layers"
    layers: list[int] | None = None
    """Layer indices in forward order (negative: from the top), e.g. [10] for BERT-base's layer 10."""
    top: int | None = Field(None, ge=1)
    """Train the last `top` layers instead of naming them."""
    quantized_body_ok: ClassVar[bool] = False
    budget_knob: ClassVar[BudgetKnob] = BudgetKnob("top", low=1, high=1024, default=1)

    @model_validator(mode="after")
    def _one_choice(self) -> LayersMethod:
        if (self.layers is None) == (self.top is None):
            raise ValueError("give exactly one of layers or top")
        if self.layers is not None and not self.layers:
            raise ValueError("layers must name at least one layer")
        return self

    def chosen(self, model: PeftxModel) -> list[tuple[str, int]]:
        """(stack, index within the stack) of each chosen layer.

        Raises:
            PeftxError: an index outside the model's layers, or `top` larger than the layer count.
        """
        order = [(s, i) for s, n in model.family.stacks(model.backbone.config, model.pooling).items() for i in range(n)]
        if self.top is not None:
            if self.top > len(order):
                raise PeftxError(f"method.top: {self.top} but the model runs {len(order)} layers")
            return order[-self.top :]
        bad = [i for i in self.layers if not -len(order) <= i < len(order)]
        if bad:
            raise PeftxError(f"method.layers: {bad} outside the model's {len(order)} layers (0 .. {len(order) - 1})")
        return [order[i] for i in self.layers]

    def with_knob(self, value: int) -> LayersMethod:
        """The top `value` layers (the knob replaces any `layers` list)."""
        return type(self).model_validate({**self.model_dump(), "layers": None, "top": value})

    def knob_limit(self, model: PeftxModel) -> int:
        """Every layer the forward pass runs."""
        return sum(model.family.stacks(model.backbone.config, model.pooling).values())

    def trained_names(self, model: PeftxModel) -> set[str]:
        chosen = set(self.chosen(model))
        (default_stack, *_) = model.family.num_layers(model.backbone.config)  # single-stack families
        return {
            n
            for n, info in model.param_infos().items()
            if info.group == "body" and info.layer is not None and (info.stack or default_stack, info.layer) in chosen
        }


METHODS.register(LayersMethod)
