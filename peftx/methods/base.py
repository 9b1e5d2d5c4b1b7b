"""Methods decide what trains. A method may first add modules (LoRA matrices, prefixes); then it
names the parameters it trains by role. The trainable set is computed once from roles and applied in
one line (`peftx.methods.apply_method`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from peftx.errors import PeftxError
from peftx.families import CORE_ROLES, OUTER_ROLES, ParamInfo

if TYPE_CHECKING:
    from peftx.model.task_model import PeftxModel

# What `train_roles` may name: a backbone role, the pseudo-role `bias` (every bias, see `role_selected`)
# or a layer around the backbone.
TRAIN_ROLE_CHOICES = (*CORE_ROLES, "bias", *OUTER_ROLES)


@dataclass(frozen=True)
class BudgetKnob:
    """The integer field of a method that sets how many parameters it trains (`peftx budget --target`).

    The trainable count must not decrease as the field grows; the matcher searches `low`..`high`
    (a method whose range depends on the model narrows it in `MethodConfig.knob_limit`).

    Attributes:
        field: name of the integer field, e.g. "r" for LoRA.
        low: smallest value.
        high: largest value searched (a practical cap).
        default: value used when a budget table names the method without one (for a method whose
            field has no default of its own, such as `layers.top`).
    """

    field: str
    low: int = 1
    high: int = 1024
    default: int | None = None


class MethodConfig(BaseModel):
    """Base of every method's recipe section; subclasses declare `name: Literal["..."] = "..."` (the
    registry key) and document each field with a docstring under it (its help text)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    name: str
    train_roles: list[str] = Field(default_factory=list)
    """Roles trained on top of the method, e.g. [layer_norm] for LoRA plus layer norms. `bias`
    means every bias."""
    quantized_body_ok: ClassVar[bool] = True  # False for methods that update quantized body weights
    adds_modules: ClassVar[bool] = False  # True for methods whose `prepare` adds modules (LoRA, prefixes)
    budget_knob: ClassVar[BudgetKnob | None] = None  # the field `peftx budget --target` varies; None: fixed
    budget_shown: ClassVar[tuple[str, ...]] = ()  # fields budget tables show besides the knob

    @field_validator("train_roles")
    @classmethod
    def _known_roles(cls, v: list[str]) -> list[str]:
        unknown = [r for r in v if r not in TRAIN_ROLE_CHOICES]
        if unknown:
            raise ValueError(f"unknown role(s) {unknown} (valid: {', '.join(TRAIN_ROLE_CHOICES)})")
        return v

    def prepare(self, model: PeftxModel) -> None:
        """Add the method's own modules to `model` (default: none)."""

    def trains(self, info: ParamInfo) -> bool:
        """Whether the method itself trains a parameter of this role (head and extras come on top)."""
        raise NotImplementedError

    def trained_names(self, model: PeftxModel) -> set[str]:
        """Names of the parameters the method itself trains (default: those `trains` picks by role).

        Methods whose choice depends on the model as a whole (its layer count, whether it has any
        bias) override this instead of `trains`.
        """
        return {n for n, info in model.param_infos().items() if self.trains(info)}

    def with_knob(self, value: int) -> MethodConfig:
        """A copy with the budget knob set to `value` (validated like a recipe's section).

        Raises:
            ValueError: the method has no budget knob.
        """
        if self.budget_knob is None:
            raise ValueError(f"method {self.name!r} has no budget knob")
        return type(self).model_validate({**self.model_dump(), self.budget_knob.field: value})

    def knob_limit(self, model: PeftxModel) -> int:
        """Largest knob value that fits `model` (default: the knob's `high`)."""
        return self.budget_knob.high if self.budget_knob else 0


def role_selected(info: ParamInfo, roles: list[str] | set[str]) -> bool:
    """Whether `info` is one of `roles`, where the pseudo-role `bias` picks any bias."""
    return info.role in roles or ("bias" in roles and info.is_bias)


def target_modules(model: PeftxModel, targets: list[str], key: str = "method.targets") -> list[str]:
    """Module names of the backbone picked by `targets`: linear roles of the family (`attention`,
    `feed_forward`, `key_value`, `feed_forward_out`) or full-match regexes over module names.

    Raises:
        PeftxError: a pattern matches no module with a weight.
    """
    family = model.family
    roles = [t for t in targets if t in family.linear_modules]
    names = family.modules_of(model.backbone, roles) if roles else []
    for p in (t for t in targets if t not in family.linear_modules):
        rx = re.compile(p)
        hits = [n for n, m in model.backbone.named_modules() if rx.fullmatch(n) and hasattr(m, "weight")]
        if not hits:
            raise PeftxError(f"{key}: {p!r} matches no module of {family.name}")
        names += hits
    return sorted(set(names))
