"""stage.json `sparsity`: one schema for every stage that hands on masks (tickets, early bird, IMP,
dynamic sparse training). The mask figures come first; the dynamic-sparse-training fields are set
by the rewire stage only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.engine.section import Section
from pipeline.sparsity.masks import MaskSet


@dataclass(kw_only=True)
class SparsityRecord(Section):
    SECTION: ClassVar[str] = "sparsity"

    density: float  # kept fraction over all masked weights
    # always written; optional so that a rewire stage.json written before this schema (density and layers
    # only) stays readable
    sparsity: float | None = None
    kept: int | None = None
    total: int | None = None
    layers: dict[str, float]  # kept fraction per masked weight
    # dynamic sparse training (rewire)
    method: str | None = None
    target_density: float | None = None
    selected: str | None = None  # best | final: whose masks `density`/`layers` describe
    final_density: float | None = None
    final_layers: dict[str, float] | None = None  # when the selected masks are the best epoch's
    counts: dict[str, int] | None = None
    flops_ratio: float | None = None
    events: int | None = None
    prune_grow_updates: int | None = None
    connections_changed: int | None = None
    ever_active: float | None = None
    dense_layers: list[str] | None = None
    updates_file: str | None = None

    @classmethod
    def of(cls, masks: MaskSet, **dst: Any) -> SparsityRecord:
        kept, total = sum(masks.counts().values()), sum(masks.sizes().values())
        return cls(density=kept / total if total else 1.0, sparsity=1.0 - kept / total if total else 0.0,
                   kept=kept, total=total, layers=masks.layer_densities(), **dst)
