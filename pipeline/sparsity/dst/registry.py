"""Dynamic sparsity methods by name. The built-in ones (`dst.methods`) are imported on first use, so the
config module can look methods up without importing them at import time (no config <-> methods cycle)."""
from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.sparsity.dst.core import DynamicSparsity

_BUILTIN = "pipeline.sparsity.dst.methods"


class MethodRegistry:
    """Name -> method class, in registration order (the built-ins first)."""

    def __init__(self) -> None:
        self._classes: dict[str, type[DynamicSparsity]] = {}
        self._loading = False

    def _load(self) -> None:
        if not self._loading:
            self._loading = True  # set first: importing the built-ins registers them through `register`
            importlib.import_module(_BUILTIN)

    def register(self, name: str, cls: type[DynamicSparsity]) -> None:
        if name in self._classes:
            raise ValueError(f"sparsity method {name!r} is already registered")
        cls.name = name
        self._classes[name] = cls

    def names(self) -> list[str]:
        self._load()
        return list(self._classes)

    def get(self, name: object) -> type[DynamicSparsity] | None:
        self._load()
        return self._classes.get(name) if isinstance(name, str) else None

    def __getitem__(self, name: str) -> type[DynamicSparsity]:
        cls = self.get(name)
        if cls is None:
            raise KeyError(f"unknown sparsity method {name!r}; valid: {', '.join(self.names())}")
        return cls

    def __contains__(self, name: object) -> bool:
        return self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self):
        self._load()
        return list(self._classes.items())

    def values(self):
        self._load()
        return list(self._classes.values())


METHODS = MethodRegistry()


def register(name: str):
    """Class decorator: `@register("mest")` makes `method: mest` valid in a rewire stage."""
    def decorate(cls):
        METHODS.register(name, cls)
        return cls
    return decorate
