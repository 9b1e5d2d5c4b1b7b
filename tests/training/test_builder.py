"""The one builder: a recipe's model built on the meta device (validate, budget) is the real model
without storage: the same parameters, shapes, dtypes and trainable flags, for every family."""

from __future__ import annotations

import pytest

from peftx.recipe import validate_recipe
from peftx.training.builder import MetaCounter, build_model
from tests.support.tiny import tiny_model, tiny_recipe

# Method, input and storage settings that change what is built, trained or stored in which dtype.
CASES = {
    "lora": {"method": {"name": "lora", "r": 4}},
    "prompt_learned_input": {"method": {"name": "prompt", "length": 3}, "input": {"name": "learned"}},
    "frozen_bf16_training": {"method": {"name": "frozen"}, "precision": "bf16"},
    "bitfit_bfloat16_storage": {"method": {"name": "bitfit"}, "dtype": "bfloat16"},
}


def case_recipe(family: str, case: str):
    settings = dict(CASES[case])
    raw = tiny_recipe(family, method=settings.pop("method"))
    if "input" in settings:
        raw["input"] = settings.pop("input")
    if "precision" in settings:
        raw["train"]["precision"] = settings.pop("precision")
    if "dtype" in settings:
        raw["model"] = tiny_model(family, dtype=settings.pop("dtype"))
    return validate_recipe(raw)


def layout(model) -> dict[str, tuple]:
    """Each parameter's name -> (shape, dtype, trainable)."""
    return {n: (tuple(p.shape), p.dtype, p.requires_grad) for n, p in model.named_parameters()}


@pytest.mark.parametrize("case", CASES)
def test_meta_model_is_the_real_model_without_storage(family, case):
    recipe = case_recipe(family, case)
    info = recipe.task.describe()
    real, provenance = build_model(recipe, info)
    meta, meta_provenance = build_model(recipe, info, meta=True)
    assert all(p.is_meta for p in meta.parameters())
    assert not any(p.is_meta for p in real.parameters())
    assert layout(meta) == layout(real)
    assert any(p.requires_grad for p in real.parameters())
    assert meta_provenance["family"] == provenance["family"] == family


def test_shared_meta_model_takes_each_method_as_a_fresh_build_does(family):
    """MetaCounter reuses one model for methods that add no modules; each leaves it as a fresh build."""
    counter = MetaCounter(case_recipe(family, "lora"))
    for method in ({"name": "layers", "top": 1}, {"name": "bitfit"}, {"name": "frozen"}, {"name": "full"}):
        recipe = validate_recipe(tiny_recipe(family, method=method))
        fresh, _ = build_model(recipe, recipe.task.describe(), meta=True)
        assert layout(counter.model(recipe.method)) == layout(fresh), method
