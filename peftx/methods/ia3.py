"""`ia3`: learned rescaling vectors on chosen projections, via peft (Liu et al. 2022, (IA)^3)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from peftx.families import ParamInfo
from peftx.methods.base import MethodConfig, target_modules
from peftx.methods.registry import METHODS

if TYPE_CHECKING:
    from peftx.model.task_model import PeftxModel


class IA3Method(MethodConfig):
    """(IA)^3: one vector per target, initialised to ones, multiplies the target's activations.

    Attention targets are scaled at their output (keys and values: out_features each); feed-forward
    targets at their input (the feed-forward output projection: its d_ff-wide input, i.e. the inner
    activations), as in the paper. On GPT-2 the key/value projection is the fused q/k/v `c_attn`, so
    queries are rescaled too (3 x hidden per layer). The body stays frozen.
    """

    name: Literal["ia3"] = "ia3"
    targets: list[str] = Field(default_factory=lambda: ["key_value", "feed_forward_out"])
    """Linear roles (key_value, feed_forward_out, attention, feed_forward) or module-name regexes."""

    @field_validator("targets")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("targets must name at least one role or module pattern")
        return v

    adds_modules: ClassVar[bool] = True

    def prepare(self, model: PeftxModel) -> None:
        # peft and transformers when a model is built: reading a recipe imports neither
        from peft import IA3Config as PeftIA3Config
        from peft import inject_adapter_in_model
        from transformers.pytorch_utils import Conv1D

        targets = target_modules(model, self.targets)
        feed_forward = re.compile(model.family.linear_modules["feed_forward"])
        modules = dict(model.backbone.named_modules())
        config = PeftIA3Config(
            target_modules=targets,
            feedforward_modules=[n for n in targets if feed_forward.fullmatch(n)],
            fan_in_fan_out=any(isinstance(modules[n], Conv1D) for n in targets),
        )
        inject_adapter_in_model(config, model.backbone)

    def trains(self, info: ParamInfo) -> bool:
        return info.role == "adapter"


METHODS.register(IA3Method)
