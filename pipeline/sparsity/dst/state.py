"""All changing state of a dynamic sparse run in one object, saved with the training progress.

What is here is everything that a resumed run needs to continue bit-identically: the masks, the union
of every mask ever active, the per-layer target counts, counters, the MEST prune-back appointment, the
Flying Bird+ histories, the per-update log and the masks of the best epoch. Random growth draws from
generators derived from (seed, step, layer), so no generator state is kept. `state_dict()` holds only
tensors and plain containers (it is loaded with torch.load(weights_only=True)).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.sparsity.masks import MaskSet


@dataclass
class DSTState:
    masks: MaskSet
    ever_active: MaskSet
    targets: dict[str, int]  # per-layer counts the method keeps exactly (between MEST grow and prune-back: not)
    events: int = 0  # topology events so far (prune-and-grow, MEST grow / prune-back, GraNet gradual prune)
    changed_total: int = 0  # mask entries flipped over the whole run
    changed_epoch: int = 0  # since the last epoch row
    prune_back_at: int | None = None  # MEST: step after which the grown weights are pruned back
    gap_history: list[float] = field(default_factory=list)  # FB+: train acc - val RA, one per evaluated epoch
    loss_history: list[float] = field(default_factory=list)  # FB+: val robust loss, one per evaluated epoch
    log: list[dict[str, Any]] = field(default_factory=list)  # one entry per topology event (updates.jsonl)
    best_value: float = -math.inf
    best_masks: MaskSet | None = None

    @classmethod
    def start(cls, masks: MaskSet) -> DSTState:
        return cls(masks=masks, ever_active=masks.clone(), targets=masks.counts())

    def ever_active_fraction(self) -> float:
        total = sum(m.numel() for m in self.ever_active.values())
        return sum(int(torch.count_nonzero(m)) for m in self.ever_active.values()) / total

    def density(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return sum(int(torch.count_nonzero(m)) for m in self.masks.values()) / total

    def layer_densities(self) -> dict[str, float]:
        return {n: int(torch.count_nonzero(m)) / m.numel() for n, m in self.masks.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": self.masks.state_dict(), "ever_active": self.ever_active.state_dict(),
            "targets": dict(self.targets), "events": self.events, "changed_total": self.changed_total,
            "changed_epoch": self.changed_epoch, "prune_back_at": self.prune_back_at,
            "gap_history": list(self.gap_history), "loss_history": list(self.loss_history),
            "log": [dict(e) for e in self.log], "best_value": self.best_value,
            "best_masks": None if self.best_masks is None else self.best_masks.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore in place: mask tensors are copied into the existing ones, which hooks may hold."""
        if list(state["targets"]) != list(self.targets):
            raise ValueError(f"sparsity state is for layers {list(state['targets'])[:3]}..., "
                             f"this model has {list(self.targets)[:3]}...")
        self.masks.load_state_dict(state["masks"])
        self.ever_active.load_state_dict(state["ever_active"])
        self.targets = dict(state["targets"])
        self.events, self.changed_total = int(state["events"]), int(state["changed_total"])
        self.changed_epoch, self.prune_back_at = int(state["changed_epoch"]), state["prune_back_at"]
        self.gap_history, self.loss_history = list(state["gap_history"]), list(state["loss_history"])
        self.log = [dict(e) for e in state["log"]]
        self.best_value = float(state["best_value"])
        best = state["best_masks"]
        self.best_masks = None if best is None else MaskSet({n: t.clone() for n, t in best.items()})
