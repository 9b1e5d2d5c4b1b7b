"""Reading recipes: YAML files, `--set` overrides, validation into the schema, one-line errors.

`--set a.b=value` overrides are parsed as YAML values and validated like the file. Every user mistake
becomes a `PeftxError` whose one line names the file and the key path.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from peftx.errors import PeftxError
from peftx.inputs import INPUTS
from peftx.recipe.grid import reject_grid
from peftx.recipe.schema import PLUGINS, RecipeBase, recipe_class


def _format_error(err: dict, where: str, raw: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    # A discriminated union puts the chosen plug-in's name in the path: method.lora.r -> method.r
    if len(loc) >= 2 and loc[0] in PLUGINS and isinstance(raw.get(loc[0]), dict) and raw[loc[0]].get("name") == loc[1]:
        loc.pop(1)
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        parent = _section_fields(loc[:-1], raw)
        hint = difflib.get_close_matches(loc[-1], parent, n=1)
        return f"{where}: {key}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    if err["type"] == "missing":
        return f"{where}: {key}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict | list) and err["type"] != "value_error" else ""
    if not key:  # a check across sections: its message starts with the keys it is about
        return f"{where}: {msg}{shown}"
    return f"{where}: {key}: {msg}{shown}"


def _section_fields(loc: list[str], raw: dict) -> list[str]:
    """Field names valid at `loc`, for 'did you mean' hints."""
    cls: Any = recipe_class()
    for part in loc:
        if part in PLUGINS:
            name = raw.get(part, {}).get("name") if isinstance(raw.get(part), dict) else None
            cls = PLUGINS[part].get(name) if name in PLUGINS[part] else None
        else:
            field = cls.model_fields.get(part) if cls else None
            cls = field.annotation if field is not None and isinstance(field.annotation, type) else None
        if cls is None:
            return []
    return list(cls.model_fields) if hasattr(cls, "model_fields") else []


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides (values parsed as YAML) to a raw recipe dict, in place."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise PeftxError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise PeftxError(f"--set {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def validate_recipe(raw: Any, where: str = "<recipe>") -> RecipeBase:
    """Validate a raw recipe dict (left unchanged).

    Raises:
        PeftxError: one line, naming `where` and the key path.
    """
    if not isinstance(raw, dict):
        raise PeftxError(f"{where}: a recipe is a mapping of sections, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    for section, registry in PLUGINS.items():
        valid = ", ".join(registry.names())
        value = raw.get(section)
        if value is None:
            continue
        if isinstance(value, str):  # shorthand: `method: lora`
            raw[section] = value = {"name": value}
        if not isinstance(value, dict):
            raise PeftxError(f"{where}: {section}: expected a mapping with a 'name'")
        if "name" not in value:
            raise PeftxError(f"{where}: {section}.name: required key is missing (valid: {valid})")
        if not isinstance(value["name"], str):
            raise PeftxError(
                f"{where}: {section}.name: expected one {registry.kind} name, got {value['name']!r} "
                f"(a list of names is a sweep: `peftx sweep {where}`)"
            )
        if value["name"] not in registry:
            raise PeftxError(f"{where}: {section}.name: unknown {registry.kind} {value['name']!r} (valid: {valid})")
    try:
        recipe = recipe_class().model_validate(raw)
    except ValidationError as e:
        errors = e.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PeftxError(_format_error(errors[0], where, raw) + more) from None
    if recipe.input is None:
        recipe = recipe.model_copy(update={"input": INPUTS.get(recipe.task.default_input())()})
    return recipe


def read_raw(path: str | Path, overrides: list[str] | None = None) -> dict:
    """A recipe file as a raw mapping, with `--set` overrides applied and `name` defaulting to the
    file's stem. Raises PeftxError on a missing file, a YAML syntax error or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise PeftxError(f"{path}: no such recipe file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        raise PeftxError(f"{path}{at}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise PeftxError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    return apply_overrides(raw, overrides or [])


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RecipeBase:
    """Read, override and validate a recipe file (one run).

    Args:
        path: a YAML file.
        overrides: `a.b=value` strings applied before validation.

    Returns:
        The validated recipe; `name` defaults to the file's stem.

    Raises:
        PeftxError: missing file, YAML syntax error, grid axes (a sweep), or an invalid recipe (one
            line, naming the key).
    """
    raw = read_raw(path, overrides)
    reject_grid(raw, str(path), f"run it with `peftx sweep {path}`")
    return validate_recipe(raw, str(path))


def dump_recipe(recipe: RecipeBase) -> str:
    """YAML of a resolved recipe (every default written out)."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
