"""The one parameter counter: by role and group, trainable vs frozen, right for quantized weights.

Training logs, result.json and `peftx budget` all count through `count_parameters`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from peftx.families import ParamInfo


def numel(p: torch.Tensor) -> int:
    """Number of parameters a tensor stands for; 4-bit packed weights count their unpacked shape."""
    quant_state = getattr(p, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return int(torch.Size(quant_state.shape).numel())
    return p.numel()


@dataclass
class Budget:
    """Parameter counts of one model."""

    total: int = 0
    trainable: int = 0
    by_role: dict[str, dict[str, int]] = field(default_factory=dict)  # role -> {trainable, frozen}
    by_group: dict[str, dict[str, int]] = field(default_factory=dict)  # input/body/adapter/head -> ...

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "trainable": self.trainable,
            "trainable_pct": round(self.trainable_pct, 4),
            "by_role": self.by_role,
            "by_group": self.by_group,
        }


def count_parameters(named: dict[str, tuple[torch.Tensor, ParamInfo]]) -> Budget:
    """Count parameters by role and group.

    Args:
        named: name -> (parameter, its ParamInfo), e.g. from `model_budget`.
    """
    by_role: dict[str, dict[str, int]] = defaultdict(lambda: {"trainable": 0, "frozen": 0})
    by_group: dict[str, dict[str, int]] = defaultdict(lambda: {"trainable": 0, "frozen": 0})
    total = trainable = 0
    for p, info in named.values():
        n = numel(p)
        kind = "trainable" if p.requires_grad else "frozen"
        by_role[info.role][kind] += n
        by_group[info.group][kind] += n
        total += n
        trainable += n if p.requires_grad else 0
    return Budget(total=total, trainable=trainable, by_role=dict(by_role), by_group=dict(by_group))


def model_budget(model) -> Budget:
    """`count_parameters` over a PeftxModel."""
    infos = model.param_infos()
    return count_parameters({n: (p, infos[n]) for n, p in model.named_parameters()})


def recipe_budget(recipe) -> Budget:
    """The budget of a recipe's model without loading or allocating weights (meta device)."""
    from peftx.build import build_model

    # Parameters are counted by what they stand for, so quantization does not change a budget, and
    # quantizing needs real weights: count the unquantized architecture.
    arch = recipe.model.model_copy(update={"pretrained": False, "quantization": "none"})
    arch_only = recipe.model_copy(update={"model": arch})
    # torch's meta device, not accelerate's init_empty_weights: that one re-creates every parameter it
    # registers, which unties tied weights (T5's and BART's shared embeddings would count twice)
    with torch.device("meta"):
        model, _ = build_model(arch_only, recipe.task.describe())
    return model_budget(model)
