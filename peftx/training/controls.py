"""The claims' controls as the builder applies them (docs/controls.md): where the backbone's weights
come from (`model.init`: shuffled by `peftx.model.controls`, self-pretrained by
`peftx.training.self_pretrain`) and what replaces the body (`model.body`: `peftx.model.ablation`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftx.errors import PeftxError
from peftx.model.ablation import ablate, train_ablated
from peftx.model.controls import shuffle_weights
from peftx.spec.input_spec import SymbolVocab
from peftx.training.self_pretrain import load_self_pretrained

if TYPE_CHECKING:
    from peftx.methods import MethodConfig
    from peftx.model.loading import Backbone
    from peftx.model.task_model import PeftxModel
    from peftx.recipe import RecipeBase
    from peftx.tasks import TaskInfo


def init_backbone(bb: Backbone, recipe: RecipeBase, info: TaskInfo, meta: bool) -> None:
    """Give a loaded backbone the weights `model.init` asks for (in place; `pretrained` and `scratch`
    are as loaded), and note the controls in its provenance.

    Raises:
        PeftxError: self-pretraining on a task whose inputs are not symbols.
    """
    m = recipe.model
    bb.provenance |= {"init": m.init, "body": m.body}
    if m.init == "self_pretrained" and not isinstance(info.input_spec, SymbolVocab):
        raise PeftxError(
            f"model.init: self_pretrained needs a task with discrete symbols; task {recipe.task.name} gives vectors"
        )
    if meta:
        return  # no values to shuffle or replace
    if m.init == "shuffled":
        bb.provenance["shuffled_tensors"] = shuffle_weights(bb.model, recipe.seed)
    elif m.init == "self_pretrained":
        bb.provenance["self_pretrained"] = load_self_pretrained(bb.model, recipe)


def replace_body(model: PeftxModel, recipe: RecipeBase) -> None:
    """Replace the assembled model's backbone by `model.body`'s ablation (nothing to do for `full`)."""
    if recipe.model.body != "full":
        ablate(model, recipe.model.body)


def train_controls(model: PeftxModel, recipe: RecipeBase, method: MethodConfig) -> bool:
    """Fix the trainable set of an ablated model (see `peftx.model.ablation.train_ablated`).

    Returns:
        Whether it did (False: a full body, which the method adapts as usual).
    """
    if recipe.model.body == "full":
        return False
    train_ablated(model, set(method.train_roles) | recipe.input.trained_roles() | {"head"})
    return True
