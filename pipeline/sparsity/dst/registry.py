"""Dynamic sparsity methods by name. Each built-in method has two halves: its spec (`dst.presets`: the
`sparsity:` block it reads, its preset, the config-time check; no torch) and its implementation
(`dst.methods`, a subclass of the spec). Config validation looks up specs only, so `pipeline validate`
does not import torch; training looks up implementations. Both are imported on first use, so the config
module can look methods up without importing them at import time (no config <-> methods cycle)."""
from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.sparsity.dst.core import DynamicSparsity
    from pipeline.sparsity.dst.presets import MethodSpec

_SPECS = "pipeline.sparsity.dst.presets"
_BUILTIN = "pipeline.sparsity.dst.methods"


class MethodRegistry:
    """Name -> method, in registration order (the built-ins first). `names`, `in`, iteration and `spec`
    read the specs; `[]`, `get`, `items` and `values` give the implementation classes."""

    def __init__(self) -> None:
        self._specs: dict[str, type[MethodSpec]] = {}  # built-in specs; a plugin's class is its own spec
        self._classes: dict[str, type[DynamicSparsity]] = {}
        self._specs_loading = False
        self._loading = False

    def _load_specs(self) -> None:
        if not self._specs_loading:
            self._specs_loading = True  # set first: importing the specs registers them through `register_spec`
            importlib.import_module(_SPECS)

    def _load(self) -> None:
        self._load_specs()
        if not self._loading:
            self._loading = True  # set first: importing the built-ins registers them through `register`
            importlib.import_module(_BUILTIN)

    def register_spec(self, name: str, spec: type[MethodSpec]) -> None:
        if name in self._specs:
            raise ValueError(f"sparsity method {name!r} is already registered")
        spec.name = name
        self._specs[name] = spec

    def register(self, name: str, cls: type[DynamicSparsity]) -> None:
        self._load_specs()
        spec = self._specs.get(name)
        if name in self._classes or (spec is not None and not issubclass(cls, spec)):
            raise ValueError(f"sparsity method {name!r} is already registered")
        cls.name = name
        self._classes[name] = cls

    def names(self) -> list[str]:
        self._load_specs()
        return [*self._specs, *(n for n in self._classes if n not in self._specs)]

    def _find_spec(self, name: object) -> type[MethodSpec] | None:
        if not isinstance(name, str):
            return None
        self._load_specs()
        return self._specs.get(name) or self._classes.get(name)

    def spec(self, name: str) -> type[MethodSpec]:
        """The method's Settings / preset / check / example, without importing its implementation."""
        found = self._find_spec(name)
        if found is None:
            raise KeyError(f"unknown sparsity method {name!r}; valid: {', '.join(self.names())}")
        return found

    def specs(self) -> list[tuple[str, type[MethodSpec]]]:
        return [(n, self.spec(n)) for n in self.names()]

    def get(self, name: object) -> type[DynamicSparsity] | None:
        self._load()
        return self._classes.get(name) if isinstance(name, str) else None

    def __getitem__(self, name: str) -> type[DynamicSparsity]:
        cls = self.get(name)
        if cls is None:
            raise KeyError(f"unknown sparsity method {name!r}; valid: {', '.join(self.names())}")
        return cls

    def __contains__(self, name: object) -> bool:
        return self._find_spec(name) is not None

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
