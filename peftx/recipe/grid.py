"""Which values of a raw recipe are grid axes (a sweep), by the schema's own field types.

A list is a grid axis wherever the schema expects a single value: `seed: [0, 1, 2]`, `train.lr:
[1e-3, 3e-4]`, a whole section (`method: [{name: lora}, {name: full}]`), or a field inside one
(`model: {pretrained: [true, false]}`). Fields that are lists by nature (`method.targets`) are not
axes; an explicit `grid:` section of dotted keys sweeps them.
"""

from __future__ import annotations

import typing

from peftx.errors import PeftxError
from peftx.recipe.schema import PLUGINS, recipe_class

SECTIONS = ("model", "task", "input", "method", "train", "output")


def _is_list_type(annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    return any(_is_list_type(a) for a in typing.get_args(annotation)) if origin is not None else False


def _section_class(section: str, value: dict):
    """The config class that validates a section as written (None: an unknown plug-in name)."""
    if section in PLUGINS:
        name = value.get("name")
        return PLUGINS[section].get(name) if isinstance(name, str) and name in PLUGINS[section] else None
    return recipe_class().model_fields[section].annotation


def find_axes(raw: dict) -> list[tuple[str, list]]:
    """(dotted key, values) of every grid axis of a raw recipe, in the order written.

    Raises:
        PeftxError: a malformed `grid:` section or an empty axis.
    """
    axes: list[tuple[str, list]] = []
    for key in ("name", "output"):  # one sweep writes under one name and one output.dir
        if isinstance(raw.get(key), list):
            raise PeftxError(f"{key}: a list here is no grid axis (a sweep has one {key}; each point is named for you)")
    if isinstance(raw.get("output"), dict) and isinstance(raw["output"].get("dir"), list):
        raise PeftxError("output.dir: a list here is no grid axis (every point of a sweep runs under one output.dir)")
    for key, value in raw.items():
        if key == "grid":
            if not isinstance(value, dict) or not all(isinstance(v, list) and v for v in value.values()):
                raise PeftxError("grid: expected a mapping of dotted keys to non-empty lists")
            axes.extend(value.items())
        elif key in SECTIONS and isinstance(value, list):
            axes.append((key, value))
        elif key in SECTIONS and isinstance(value, dict):
            fields = getattr(_section_class(key, value), "model_fields", {})
            for sub, v in value.items():
                if isinstance(v, list) and sub in fields and not _is_list_type(fields[sub].annotation):
                    axes.append((f"{key}.{sub}", v))
                elif isinstance(v, list) and sub == "name" and key in PLUGINS:
                    axes.append((f"{key}.{sub}", v))  # `method: {name: [lora, full]}`: one plug-in per point
        elif isinstance(value, list):
            axes.append((key, value))
    for key, values in axes:
        if not values:
            raise PeftxError(f"{key}: an empty list gives an empty sweep")
    return axes


def reject_grid(raw: dict, where: str, instead: str) -> None:
    """Refuse a raw recipe that holds grid axes where one run is expected.

    Args:
        where: the file, for the message.
        instead: what to do instead, e.g. "run it with `peftx sweep FILE`".

    Raises:
        PeftxError: naming the axes.
    """
    axes = find_axes(raw)
    if axes:
        raise PeftxError(f"{where}: holds grid axes ({', '.join(k for k, _ in axes)}); {instead}")
