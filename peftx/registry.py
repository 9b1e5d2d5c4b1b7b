"""One small generic registry for plug-ins (methods, input adapters, tasks, model families).

Each plug-in module registers itself when imported, under the name it declares once: a recipe config
class by its `name: Literal["..."] = "..."` field, a `Family` (any dataclass instance) by its `name`.
Third parties add their own through the entry point group given to the registry (e.g.
``peftx.inputs``); those load on first lookup.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Generic, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel

from peftx.errors import PeftxError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def declared_name(obj: object) -> str | None:
    """The name `obj` declares for itself: the one value of a config class's `name` Literal field, or
    the `name` of a dataclass instance (a `Family`); None for any other object.

    Raises:
        ValueError: a config class whose `name` is not a single-valued string Literal, or whose
            default differs from it.
    """
    if isinstance(obj, type) and issubclass(obj, BaseModel):
        field = obj.model_fields.get("name")
        choices = get_args(field.annotation) if field and get_origin(field.annotation) is Literal else ()
        if len(choices) != 1 or not isinstance(choices[0], str):
            raise ValueError(f'{obj.__qualname__} must declare its name once: `name: Literal["..."] = "..."`')
        if field.default != choices[0]:
            raise ValueError(f"{obj.__qualname__}.name must default to its Literal value {choices[0]!r}")
        return choices[0]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and isinstance(getattr(obj, "name", None), str):
        return obj.name
    return None


class Registry(Generic[T]):
    """A name -> object map that refuses duplicates and lists valid names on a miss.

    Args:
        kind: what the entries are, for messages ("method", "input adapter", ...).
        entry_point_group: Python entry point group scanned once for third-party entries.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self._group = entry_point_group
        self._entries: dict[str, T] = {}
        self._plugins_loaded = entry_point_group is None

    def register(self, obj: T, name: str | None = None) -> T:
        """Add `obj` under the name it declares (see `declared_name`); `name` names an object that
        declares none.

        Returns:
            `obj`, so a registration can sit where the object is defined.

        Raises:
            ValueError: no name, a malformed one, one that differs from what `obj` declares, or a
                duplicate.
        """
        own = declared_name(obj)
        if own is None:
            if name is None:
                raise ValueError(f"{self.kind} {obj!r} declares no name: pass name=")
            own = name
        elif name is not None and name != own:
            raise ValueError(f"{self.kind} registered as {name!r} declares the name {own!r}")
        if not _NAME.match(own):
            raise ValueError(f"{self.kind} name {own!r} must be lowercase letters, digits and '_'")
        if own in self._entries:
            raise ValueError(f"{self.kind} {own!r} is already registered")
        self._entries[own] = obj
        return obj

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self._group):
            ep.load()  # importing the module registers its entries

    def get(self, name: str) -> T:
        """The entry called `name`; raises PeftxError naming the valid choices."""
        self._load_plugins()
        if name not in self._entries:
            raise PeftxError(f"unknown {self.kind} {name!r} (valid: {', '.join(self.names())})")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
