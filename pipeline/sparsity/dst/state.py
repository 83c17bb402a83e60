"""All changing state of a dynamic sparse run in one object, saved with the training progress.

What is here is everything that a resumed run needs to continue bit-identically: the masks, the union
of every mask ever active, the per-layer target counts, counters, the per-update log, the masks of the
best epoch, and `extra`, the method's own state (MEST's prune-back appointment, Flying Bird+'s signal
histories: whatever its `initial_extra()` declares), saved and restored as it is. Random growth draws
from generators derived from (seed, step, layer), so no generator state is kept. `state_dict()` holds
only tensors and plain containers (it is loaded with torch.load(weights_only=True)).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.sparsity.masks import MaskSet


@dataclass
class DSTState:
    masks: MaskSet
    ever_active: MaskSet
    targets: dict[str, int]  # per-layer counts the method keeps exactly (between MEST grow and prune-back: not)
    frozen: frozenset[str] = frozenset()  # dense_first / dense_last weights: never rewired (fixed by the config)
    events: int = 0  # topology events so far (prune-and-grow, MEST grow / prune-back, GraNet gradual prune)
    changed_total: int = 0  # mask entries flipped over the whole run
    changed_epoch: int = 0  # since the last epoch row
    log: list[dict[str, Any]] = field(default_factory=list)  # one entry per topology event (updates.jsonl)
    best_value: float = -math.inf
    best_masks: MaskSet | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the method's own state (plain values and tensors)

    @classmethod
    def start(cls, masks: MaskSet, *, frozen: frozenset[str] = frozenset(),
              extra: Mapping[str, Any] | None = None) -> DSTState:
        return cls(masks=masks, ever_active=masks.clone(), targets=masks.counts(), frozen=frozenset(frozen),
                   extra=copy.deepcopy(dict(extra or {})))

    def ever_active_fraction(self) -> float:
        return self.ever_active.density()

    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": self.masks.state_dict(), "ever_active": self.ever_active.state_dict(),
            "targets": dict(self.targets), "events": self.events, "changed_total": self.changed_total,
            "changed_epoch": self.changed_epoch, "log": [dict(e) for e in self.log], "best_value": self.best_value,
            "best_masks": None if self.best_masks is None else self.best_masks.state_dict(),
            "extra": copy.deepcopy(self.extra),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore in place: mask tensors are copied into the existing ones, which hooks may hold."""
        if list(state["targets"]) != list(self.targets):
            raise ValueError(f"sparsity state is for layers {list(state['targets'])[:3]}..., "
                             f"this model has {list(self.targets)[:3]}...")
        if set(state["extra"]) != set(self.extra):
            raise ValueError(f"sparsity state holds method state {sorted(state['extra'])}, "
                             f"this method keeps {sorted(self.extra)}")
        self.masks.load_state_dict(state["masks"])
        self.ever_active.load_state_dict(state["ever_active"])
        self.targets = dict(state["targets"])
        self.events, self.changed_total = int(state["events"]), int(state["changed_total"])
        self.changed_epoch = int(state["changed_epoch"])
        self.log = [dict(e) for e in state["log"]]
        self.best_value = float(state["best_value"])
        best = state["best_masks"]
        self.best_masks = None if best is None else MaskSet({n: t.clone() for n, t in best.items()})
        self.extra = copy.deepcopy(dict(state["extra"]))
