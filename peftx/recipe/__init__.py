"""Recipes: the schema (`schema`; the `train` section and the sections' base in `sections`), which
values are grid axes (`grid`), reading and validating YAML (`load`)."""

from peftx.recipe.grid import find_axes, reject_grid
from peftx.recipe.load import apply_overrides, dump_recipe, load_recipe, read_raw, validate_recipe
from peftx.recipe.schema import (
    PLUGINS,
    ModelSection,
    OutputSection,
    RecipeBase,
    recipe_class,
    result_defining,
    result_neutral_keys,
)
from peftx.recipe.sections import TrainSection

__all__ = [
    "PLUGINS",
    "ModelSection",
    "OutputSection",
    "RecipeBase",
    "TrainSection",
    "apply_overrides",
    "dump_recipe",
    "find_axes",
    "load_recipe",
    "read_raw",
    "recipe_class",
    "reject_grid",
    "result_defining",
    "result_neutral_keys",
    "validate_recipe",
]
