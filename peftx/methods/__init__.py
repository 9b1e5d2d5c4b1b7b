"""Methods (what trains). Each module registers its recipe config class when imported.

The config modules import no torch, transformers or peft at import time (what a method builds is
imported when it builds it), so a recipe is read and checked, and `peftx recipe show` prints, without
them; tests/test_cold_paths.py checks it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftx.errors import PeftxError
from peftx.methods import (  # noqa: F401  (registration)
    bitfit,
    frozen,
    full,
    ia3,
    layers,
    lora,
    peft_tuner,
    prefix,
    prompt,
)
from peftx.methods.base import MethodConfig, role_selected
from peftx.methods.registry import METHODS
from peftx.util.peft_shim import peft_without_bitsandbytes

if TYPE_CHECKING:
    from peftx.model.task_model import PeftxModel


def apply_method(model: PeftxModel, method: MethodConfig, input_roles: set[str]) -> set[str]:
    """Add the method's modules to `model`, then make exactly the intended parameters trainable.

    Trainable = what the method trains + the head + `method.train_roles` + `input_roles` (the input
    adapter's `trained_roles()`: the input layer when `input.trainable`). `train_roles` composes any
    method with extra roles, e.g. prefix + layer norms. Returns the trainable parameter names.
    """
    from peftx.model.quantization import is_quantized  # torch: see the module docstring

    with peft_without_bitsandbytes(model):
        method.prepare(model)
    extra = set(method.train_roles) | input_roles | {"head"}
    added = {n for n, info in model.param_infos().items() if role_selected(info, extra)}
    trainable = method.trained_names(model) | added
    frozen_only = sorted(n for n, p in model.named_parameters() if n in trainable and is_quantized(p))
    if frozen_only:
        raise PeftxError(
            f"method.name: {method.name!r} would train {len(frozen_only)} quantized weight(s) (e.g. {frozen_only[0]}); "
            "a quantized body stays frozen: use model.quantization: none"
        )
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    return trainable


__all__ = ["METHODS", "MethodConfig", "apply_method"]
