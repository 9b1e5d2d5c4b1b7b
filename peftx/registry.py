"""One small generic registry for plug-ins (methods, input adapters, tasks, model families).

Each plug-in module registers itself under a lowercase name when imported. Third parties add their own
through the entry point group given to the registry (e.g. ``peftx.inputs``); those load on first lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from peftx.errors import PeftxError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


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

    def register(self, name: str, obj: T) -> T:
        """Add `obj` under `name`; raises ValueError on a duplicate or malformed name."""
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be lowercase letters, digits and '_'")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj
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
