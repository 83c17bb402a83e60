"""Stage types by name: the built-in ones (`stages.BUILTIN`) and plugins from the entry-point group
`pipeline.stages`. A third-party package adds a stage by declaring, in its own pyproject.toml:

    [project.entry-points."pipeline.stages"]
    my_stage = "my_package.my_module:MyStage"

A plugin that reuses a taken name is refused (listed by `pipeline stages` with the reason) rather than
silently shadowing or being shadowed; the same target declared twice (stale dist-info) is harmless.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.engine.stage import Stage

GROUP = "pipeline.stages"


def _load_target(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class StageRegistry:
    def __init__(self) -> None:
        self._classes: dict[str, type[Stage]] = {}
        self._targets: dict[str, str] = {}
        self.broken: dict[str, str] = {}  # name -> why it could not be registered
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        from stages import BUILTIN

        for name, target in BUILTIN.items():
            self._add(name, target, lambda t=target: _load_target(t))
        for ep in entry_points(group=GROUP):
            self._add(ep.name, ep.value, ep.load)

    def _add(self, name: str, target: str, load) -> None:
        from pipeline.engine.stage import Stage

        if name in self._targets:
            if self._targets[name] != target:
                self.broken[f"{name} ({target})"] = f"the name {name!r} is already taken by {self._targets[name]}"
            return
        try:
            cls = load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            self.broken[name] = f"{target}: {type(exc).__name__}: {exc}"
            return
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            self.broken[name] = f"{target} is not a pipeline.stage.Stage subclass"
            return
        self._classes[name], self._targets[name] = cls, target

    def names(self) -> list[str]:
        self._load()
        return sorted(self._classes)

    def get(self, name: str) -> type[Stage]:
        self._load()
        if name not in self._classes:
            hint = f" (its plugin failed to load: {self.broken[name]})" if name in self.broken else ""
            raise KeyError(f"unknown stage type {name!r}{hint}; valid: {', '.join(self.names())}")
        return self._classes[name]

    def register(self, name: str, cls: type[Stage]) -> None:
        """Register in-process (tests, notebooks); packages should use the entry-point group."""
        self._load()
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(f"stage type {name!r} is already registered ({self._targets[name]})")
        self._classes[name], self._targets[name] = cls, f"{cls.__module__}:{cls.__qualname__}"

    def reload(self) -> None:
        self._classes.clear()
        self._targets.clear()
        self.broken.clear()
        self._loaded = False


STAGES = StageRegistry()
