"""`lora`: low-rank updates of chosen linear layers, via peft. The body stays frozen; the LoRA
matrices, the head (and any `train_roles`) train. With `train.fused_lora` the training loop runs these
layers through `peftx.methods.lora_fused` (the same model, fewer passes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from peftx.families import ParamInfo
from peftx.methods.base import BudgetKnob, MethodConfig, target_modules
from peftx.methods.registry import METHODS

if TYPE_CHECKING:
    from peftx.model.task_model import PeftxModel


class LoraMethod(MethodConfig):
    """LoRA (Hu et al. 2021) on the family's attention (and feed-forward) matrices."""

    name: Literal["lora"] = "lora"
    r: int = Field(8, ge=1)
    """Rank: higher means more capacity and more parameters (r x (in + out) per matrix)."""
    alpha: float = 16.0
    """Scale of the update is alpha / r (alpha / sqrt(r) with rslora)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the input of each LoRA update during training (0: none)."""
    targets: list[str] = Field(default_factory=lambda: ["attention", "feed_forward"])
    """Linear roles (attention, feed_forward, key_value, feed_forward_out) or module-name regexes
    (e.g. 'encoder\\.layer\\.5\\..*query')."""
    use_dora: bool = False
    """DoRA: also learn each target's per-output-channel magnitude (+ out_features per matrix)."""
    use_rslora: bool = False
    """rsLoRA: scale the update by alpha / sqrt(r) instead of alpha / r (stabler at high rank)."""
    budget_knob: ClassVar[BudgetKnob] = BudgetKnob("r", low=1, high=1024)

    @field_validator("targets")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("targets must name at least one role or module pattern")
        return v

    adds_modules: ClassVar[bool] = True

    def prepare(self, model: PeftxModel) -> None:
        # peft and transformers when a model is built: reading a recipe imports neither
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model
        from transformers.pytorch_utils import Conv1D

        targets = target_modules(model, self.targets)
        modules = dict(model.backbone.named_modules())
        config = PeftLoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            # GPT-2's Conv1D stores weights transposed (in, out)
            fan_in_fan_out=any(isinstance(modules[n], Conv1D) for n in targets),
            use_dora=self.use_dora,
            use_rslora=self.use_rslora,
        )
        inject_adapter_in_model(config, model.backbone)

    def trains(self, info: ParamInfo) -> bool:
        return info.role == "adapter"


METHODS.register(LoraMethod)
