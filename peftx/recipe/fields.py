"""Every recipe field with its type, default and help text, read from the schema itself (the field
docstrings), for the plug-ins registered now: what `peftx recipe show` prints."""

from __future__ import annotations

import typing
from dataclasses import dataclass

from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from peftx.errors import PeftxError
from peftx.recipe.schema import PLUGINS, RecipeBase, result_neutral_keys

FIXED_SECTIONS = ("model", "train", "output")


@dataclass(frozen=True)
class FieldDoc:
    key: str  # dotted, e.g. "train.lr" or "method.r"
    type: str
    default: str
    help: str


def _type_text(annotation) -> str:
    if annotation is None:
        return "null"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if origin is not None and str(origin) in ("typing.Union", "<class 'types.UnionType'>"):
        return " | ".join(_type_text(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and origin is None:
        return {"NoneType": "null", "str": "text", "float": "number", "int": "integer"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation).replace("typing.", "")


def _default_text(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "(required)"
    value = field.default_factory() if field.default_factory is not None else field.default
    return "null" if value is None else str(value)


def _fields(cls: type[BaseModel], prefix: str) -> list[FieldDoc]:
    neutral = set(result_neutral_keys())
    out = []
    for name, field in cls.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            continue  # a nested section: listed on its own
        text = " ".join((field.description or "").split())
        if name == "name" and not text and cls.__doc__:  # a plug-in's name: what the plug-in is
            text = " ".join(cls.__doc__.split("\n\n")[0].split())
        key = prefix + name
        if key in neutral:
            text = (text + " " if text else "") + "(does not change results)"
        out.append(FieldDoc(key, _type_text(ann), _default_text(field), text))
    return out


def section_docs(section: str | None = None) -> list[tuple[str, list[FieldDoc]]]:
    """(title, fields) for a section (`train`), a plug-in (`method.lora`), every plug-in of a section
    (`method`), or everything (None).

    Raises:
        PeftxError: an unknown section or plug-in name (listing the valid ones).
    """
    if section is None:
        titles = ["recipe", *FIXED_SECTIONS, *PLUGINS]
        return [doc for t in titles for doc in section_docs(t)]
    head, _, plugin = section.partition(".")
    if head == "recipe" and not plugin:
        return [("recipe (top level)", _fields(RecipeBase, ""))]
    if head in FIXED_SECTIONS and not plugin:
        return [(head, _fields(RecipeBase.model_fields[head].annotation, f"{head}."))]
    if head in PLUGINS:
        registry = PLUGINS[head]
        names = [plugin] if plugin else registry.names()
        return [(f"{head}: {n}", _fields(registry.get(n), f"{head}.")) for n in names]
    valid = ", ".join(["recipe", *FIXED_SECTIONS, *PLUGINS])
    raise PeftxError(f"unknown recipe section {section!r} (valid: {valid}, or a plug-in such as method.lora)")


def render_docs(section: str | None, console: Console) -> None:
    """Print `section_docs(section)` as one table per section or plug-in."""
    for title, fields in section_docs(section):
        table = Table(title=title, title_justify="left")
        for col in ("key", "type", "default", "help"):
            table.add_column(col, overflow="fold")
        for f in fields:
            table.add_row(escape(f.key), escape(f.type), escape(f.default), escape(f.help))
        console.print(table)
