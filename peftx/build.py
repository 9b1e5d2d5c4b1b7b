"""Build a `PeftxModel` from a recipe: backbone, input adapter, head, method. Used by `run`, by
reloading a finished run, and by the budget counter (on the meta device), so all construct the model
the same way."""

from __future__ import annotations

import torch

from peftx.env import resolve_precision
from peftx.errors import PeftxError
from peftx.inputs import InputContext
from peftx.loading import Backbone, load_backbone
from peftx.methods import apply_method
from peftx.model import PeftxModel
from peftx.quantization import QuantSpec
from peftx.recipe import RecipeBase
from peftx.tasks import TaskInfo

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def storage_dtype(dtype: str) -> torch.dtype:
    """The dtype a backbone loads in for `model.dtype` ('auto' loads float32; see `store_frozen`)."""
    return torch.float32 if dtype == "auto" else DTYPES[dtype]


def store_frozen(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Keep every frozen floating-point parameter in `dtype` (trained ones stay as they are)."""
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(dtype)


def assemble(recipe: RecipeBase, info: TaskInfo, bb: Backbone) -> PeftxModel:
    """The recipe's input layer and head around a backbone; the method is not applied yet.

    Raises:
        PeftxError: the recipe's pooling or input layer does not fit the backbone.
    """
    m = recipe.model
    pooling = m.pooling or bb.family.poolings[0]
    if pooling not in bb.family.poolings:
        raise PeftxError(
            f"model.pooling: {pooling!r} is not one of {bb.family.name}'s: {', '.join(bb.family.poolings)}"
        )
    specials = bb.family.special_ids(bb.model.config, bb.tokenizer)
    ctx = InputContext(
        family=bb.family,
        backbone=bb.model,
        tokenizer=bb.tokenizer,
        specials=specials,
        spec=info.input_spec,
        hidden_size=bb.family.hidden_size(bb.model.config),
    )
    input_layer = recipe.input.build(ctx)
    return PeftxModel(bb.family, bb.model, input_layer, info.num_classes, pooling, specials, m.head_dropout)


def build_model(recipe: RecipeBase, info: TaskInfo) -> tuple[PeftxModel, dict]:
    """The recipe's model with its method applied (trainable set fixed).

    Returns:
        (model, provenance of the backbone for result.json).

    Raises:
        PeftxError: the backbone cannot be had, or the recipe's choices do not fit it.
    """
    m = recipe.model
    quant = QuantSpec.from_section(m)
    bb = load_backbone(m.source, m.pretrained, m.family, storage_dtype(m.dtype), m.config_overrides, quant)
    model = assemble(recipe, info, bb)
    apply_method(model, recipe.method, recipe.input)
    if m.dtype == "auto" and quant is None and resolve_precision(recipe.train.precision) == "bf16":
        store_frozen(model, torch.bfloat16)  # loaded in float32 so that trained weights start exact
    bb.provenance["family"] = bb.family.name
    return model, bb.provenance
