"""Methods decide what trains. A method may first add modules (LoRA matrices, prefixes); then it
names the parameters it trains by role. The trainable set is computed once from roles and applied in
one line (`peftx.methods.apply_method`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from peftx.families import ParamInfo

if TYPE_CHECKING:
    from peftx.model import PeftxModel

ROLE_CHOICES = (
    "token_embedding",
    "position_embedding",
    "attention",
    "feed_forward",
    "layer_norm",
    "bias",
    "input",
    "head",
)


class MethodConfig(BaseModel):
    """Base of every method's recipe section."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    train_roles: list[str] = Field(default_factory=list)
    """Roles trained on top of the method, e.g. [layer_norm] for LoRA plus layer norms. `bias`
    means every bias."""
    quantized_body_ok: ClassVar[bool] = True  # False for methods that update quantized body weights

    def prepare(self, model: PeftxModel) -> None:
        """Add the method's own modules to `model` (default: none)."""

    def trains(self, info: ParamInfo) -> bool:
        """Whether the method itself trains a parameter of this role (head and extras come on top)."""
        raise NotImplementedError


def role_selected(info: ParamInfo, roles: list[str] | set[str]) -> bool:
    """Whether `info` is one of `roles`, where the pseudo-role `bias` picks any bias."""
    return info.role in roles or ("bias" in roles and info.is_bias)
