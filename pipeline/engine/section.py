"""Typed stage.json sections: a dataclass per section, defined next to the code that writes it.

A writer builds the dataclass and stores `to_json()` in `ctx.record[SECTION]`; a reader parses what a
finished stage recorded with `StageRecord.section(Cls)`. None-valued fields are left out of the JSON
(a clean-trained stage has no attack figures), and parsing refuses unknown or missing keys with the
section and key named, so a schema change shows up at the reader instead of as a silent default.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, TypeVar

from pipeline.engine.errors import CheckpointError

T = TypeVar("T", bound="Section")


@dataclass
class Section:
    SECTION: ClassVar[str] = ""
    NESTED: ClassVar[dict[str, type[Section]]] = {}  # field -> section type of its value

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value.to_json() if isinstance(value, Section) else value
        return out

    @classmethod
    def from_json(cls: type[T], data: Any, where: str | None = None) -> T | None:
        """Parse a recorded section (None when it was not recorded)."""
        if data is None:
            return None
        where = where or cls.SECTION or cls.__name__
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: expected a mapping, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise CheckpointError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
        missing = [n for n, f in known.items() if n not in data and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise CheckpointError(f"{where}: missing key(s) {', '.join(missing)}")
        return cls(**{k: cls.NESTED[k].from_json(v, f"{where}.{k}") if k in cls.NESTED else v for k, v in data.items()})
