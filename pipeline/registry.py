"""Stage types, found by name through the entry-point group `pipeline.stages`.

A third-party package adds a stage by declaring, in its own pyproject.toml:

    [project.entry-points."pipeline.stages"]
    my_stage = "my_package.my_module:MyStage"
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .stage import Stage

GROUP = "pipeline.stages"


class StageRegistry:
    def __init__(self) -> None:
        self._classes: dict[str, type[Stage]] = {}
        self.broken: dict[str, str] = {}  # name -> why its entry point failed to load
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        from .stage import Stage

        for ep in entry_points(group=GROUP):
            if ep.name in self._classes:
                continue  # first registration wins; duplicates come from stale dist-info
            try:
                cls = ep.load()
            except Exception as exc:  # a broken plugin must not take the whole CLI down
                self.broken[ep.name] = f"{ep.value}: {type(exc).__name__}: {exc}"
                continue
            if not (isinstance(cls, type) and issubclass(cls, Stage)):
                self.broken[ep.name] = f"{ep.value} is not a pipeline.stage.Stage subclass"
                continue
            self._classes[ep.name] = cls
        self._loaded = True

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
        self._classes[name] = cls

    def reload(self) -> None:
        self._classes.clear()
        self.broken.clear()
        self._loaded = False


STAGES = StageRegistry()
