"""Reading recipes: YAML files, `--set` overrides, validation into the schema, one-line errors.

`--set a.b=value` overrides are parsed as YAML values and validated like the file. Every user mistake
becomes a `PeftxError` whose one line names the file and the key path (and the line, for YAML).

One YAML loader reads files and `--set` values alike (`RecipeLoader`): PyYAML's safe loader, refusing
duplicate keys (PyYAML keeps the last one silently) and reading numbers as YAML 1.2 does (`1e-5` is a
float; YAML 1.1, which PyYAML follows, wants `1.0e-5` and reads `1e-5` as a string). Aliases are
counted before they are expanded: a document whose aliases would expand past `MAX_YAML_NODES` values (an
"alias bomb", a few lines that expand to billions) or that refer to themselves is refused at once.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from peftx.errors import PeftxError
from peftx.inputs import INPUTS
from peftx.recipe.grid import find_axes, reject_grid
from peftx.recipe.schema import PLUGINS, RecipeBase, recipe_class
from peftx.util.echo import quoted
from peftx.util.text_files import read_text

# YAML 1.2's core-schema float: a dot or an exponent, either optional sign (`1e-5`, `3E4`, `.5`, `2.`).
_FLOAT_12 = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats that refuses a key written twice in one mapping."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first[key] + 1})", key_node.start_mark
                    )
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


# Appended after PyYAML's own resolvers, so only what they leave a string (`1e-5`) becomes a float.
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


MAX_YAML_NODES = 100_000
"""The most values (scalars, lists, mappings) a recipe may expand to with its aliases; a large sweep
recipe has a few thousand."""


def _expanded_size(root: yaml.Node) -> None:
    """Refuse a node tree whose aliases expand past `MAX_YAML_NODES` values, counting each shared node
    once per use without expanding it (a node is counted once, its size reused at every alias).

    Raises:
        yaml.constructor.ConstructorError: too large, or an alias inside the node it refers to.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    # iterative post-order walk: an alias chain nested thousands deep must not hit the recursion limit
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if not children_done:
            if key in open_nodes:
                raise yaml.constructor.ConstructorError(
                    None, None, "an alias refers to a node that contains it", node.start_mark
                )
            open_nodes.add(key)
            stack.append((node, True))
            for child in children:
                if id(child) in open_nodes and id(child) not in sizes:
                    raise yaml.constructor.ConstructorError(
                        None, None, "an alias refers to a node that contains it", child.start_mark
                    )
                stack.append((child, False))
            continue
        open_nodes.discard(key)
        sizes[key] = 1 + sum(sizes[id(c)] for c in children)
        if sizes[key] > MAX_YAML_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"aliases expand to more than {MAX_YAML_NODES:,} values", node.start_mark
            )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def parse_yaml(text: str) -> Any:
    """YAML text as data, read by `RecipeLoader`, refusing aliases that expand too far (see
    `MAX_YAML_NODES`) before expanding them."""
    loader = RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _yaml_error(where: str, e: Exception, text: str) -> PeftxError:
    """One line for a YAML error: the file, the line, and what is wrong."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line = f":{mark.line + 1}" if mark is not None else ""
    if isinstance(e, yaml.reader.ReaderError):
        char = e.character if isinstance(e.character, int) else ord(e.character)
        line = f":{text.count(chr(10), 0, e.position) + 1}"
        return PeftxError(f"{where}{line}: invalid YAML: unacceptable character #x{char:04x}")
    if isinstance(e, RecursionError):
        return PeftxError(f"{where}: invalid YAML: nested too deeply")
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return PeftxError(f"{where}{line}: invalid YAML: {problem}")


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
    shown = f" (got {quoted(value)})" if not isinstance(value, dict | list) and err["type"] != "value_error" else ""
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
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or not all(parts):
            raise PeftxError(f"--set {quoted(item)}: expected KEY=VALUE, e.g. train.lr=3e-4")
        try:
            value = parse_yaml(text)
        except yaml.constructor.ConstructorError as e:  # valid YAML syntax, refused content (a duplicate key)
            raise PeftxError(f"--set {quoted(item)}: {e.problem}") from None
        except (yaml.YAMLError, RecursionError):
            value = text  # not YAML: the text itself (the schema says whether a string fits)
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise PeftxError(f"--set {quoted(item)}: {part} is not a section")
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
    file's stem. Raises PeftxError on a missing, binary or non-UTF-8 file, a YAML error (naming the
    line; a duplicate key is one), an empty file or a non-mapping."""
    path = Path(path)
    text = read_text(path, "recipe file")
    try:
        raw = parse_yaml(text)
    except (yaml.YAMLError, RecursionError) as e:
        raise _yaml_error(str(path), e, text) from None
    if raw is None:
        raise PeftxError(f"{path}: empty recipe (expected a mapping of sections: model, task, method, train ...)")
    if not isinstance(raw, dict):
        raise PeftxError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    # the stem as a plain run name: `my recipe (v2).yaml` runs as `my-recipe-v2`
    raw.setdefault("name", re.sub(r"[^A-Za-z0-9._=+,@-]+", "-", path.stem).strip("-.") or "run")
    raw = apply_overrides(raw, overrides or [])
    try:
        find_axes(raw)  # a malformed grid is named with its file here, before any reader expands it
    except PeftxError as e:
        raise PeftxError(f"{path}: {e}") from None
    return raw


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
