"""The one parameter counter: by role and group, trainable vs frozen, right for quantized weights;
and memory estimates from its counts. Counting a recipe's model without weights (built on the meta
device) is the builder's (`peftx.training.builder.recipe_budget`, `MetaCounter`).

Training logs, result.json, `peftx sweep --dry-run` and `peftx budget` all count through
`count_parameters`. This module never imports torch at run time, so cached budget tables print
without it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from peftx.families import ParamInfo
    from peftx.model.task_model import PeftxModel

# Roles whose frozen weight matrices an 8-bit or 4-bit backbone stores quantized (the body's linear
# layers; embeddings, layer norms, biases and the head stay in floating point).
QUANTIZABLE_ROLES = ("attention", "feed_forward")


def numel(p: torch.Tensor) -> int:
    """Number of parameters a tensor stands for; 4-bit packed weights count their unpacked shape."""
    quant_state = getattr(p, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return math.prod(quant_state.shape)
    return p.numel()


@dataclass
class Budget:
    """Parameter counts of one model."""

    total: int = 0
    trainable: int = 0
    by_role: dict[str, dict[str, int]] = field(default_factory=dict)  # role -> {trainable, frozen}
    by_group: dict[str, dict[str, int]] = field(default_factory=dict)  # input/body/adapter/head -> ...
    quantizable: int = 0  # frozen weight matrices of the body's linear layers (see QUANTIZABLE_ROLES)

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def trainable_in(self, group: str) -> int:
        """Trainable parameters of one group (input, body, adapter, head)."""
        return self.by_group.get(group, {}).get("trainable", 0)

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "trainable": self.trainable,
            "trainable_pct": round(self.trainable_pct, 4),
            "by_role": self.by_role,
            "by_group": self.by_group,
            "quantizable": self.quantizable,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Budget:
        """Inverse of `to_dict`."""
        return cls(d["total"], d["trainable"], d["by_role"], d["by_group"], d.get("quantizable", 0))


def count_parameters(
    named: dict[str, tuple[torch.Tensor, ParamInfo]], keep_fp32: tuple[str, ...] | list[str] = ()
) -> Budget:
    """Count parameters by role and group.

    Args:
        named: name -> (parameter, its ParamInfo), e.g. from `model_budget`.
        keep_fp32: module names that quantization leaves in full precision (transformers'
            `_keep_in_fp32_modules`, e.g. T5's `wo`); their weights are not counted as quantizable.
    """
    by_role: dict[str, dict[str, int]] = defaultdict(lambda: {"trainable": 0, "frozen": 0})
    by_group: dict[str, dict[str, int]] = defaultdict(lambda: {"trainable": 0, "frozen": 0})
    total = trainable = quantizable = 0
    for name, (p, info) in named.items():
        n = numel(p)
        kind = "trainable" if p.requires_grad else "frozen"
        by_role[info.role][kind] += n
        by_group[info.group][kind] += n
        total += n
        trainable += n if p.requires_grad else 0
        kept = any(part in keep_fp32 for part in name.split("."))
        if not p.requires_grad and not info.is_bias and info.role in QUANTIZABLE_ROLES and not kept:
            quantizable += n
    return Budget(total, trainable, dict(by_role), dict(by_group), quantizable)


def model_budget(model: PeftxModel) -> Budget:
    """`count_parameters` over a PeftxModel."""
    infos = model.param_infos()
    keep = getattr(model.backbone, "_keep_in_fp32_modules", None) or ()
    return count_parameters({n: (p, infos[n]) for n, p in model.named_parameters()}, keep)


@dataclass(frozen=True)
class MemoryScheme:
    """Bytes per parameter of one way to store and train a model with AdamW (two moments per
    trainable parameter). Activations are not included: they depend on batch size and length."""

    label: str
    weight: float  # per stored parameter
    quantized: float  # per frozen linear-layer weight of the body (`Budget.quantizable`)
    gradient: float  # per trainable parameter
    optimizer: float  # AdamW state per trainable parameter


MEMORY_SCHEMES = {
    "fp32": MemoryScheme("fp32", 4, 4, 4, 8),
    "bf16": MemoryScheme("bf16", 2, 2, 2, 4),  # weights, gradients and AdamW moments in bf16
    "int8_weights": MemoryScheme("8-bit weights", 2, 1, 2, 4),  # bf16, frozen linear weights int8
    "adamw_8bit": MemoryScheme("8-bit AdamW", 4, 4, 4, 2),  # fp32, moments in 8 bits (AdamW8bit)
}


def memory(budget: Budget, scheme: MemoryScheme) -> dict[str, int]:
    """Bytes of weights, gradients and optimizer state (and their total) under `scheme`."""
    weights = scheme.quantized * budget.quantizable + scheme.weight * (budget.total - budget.quantizable)
    out = {
        "weights": weights,
        "gradients": scheme.gradient * budget.trainable,
        "optimizer": scheme.optimizer * budget.trainable,
    }
    out = {k: int(v) for k, v in out.items()}
    return out | {"total": sum(out.values())}


def fmt_count(n: int) -> str:
    """A parameter count for people: "1.50B", "110.00M", "12.29k", "512"."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)
