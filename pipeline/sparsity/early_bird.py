"""Early-bird ticket detection (Robust Bird, spec §2.2): stop when successive magnitude masks settle."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from pipeline.sparsity.masks import MaskSet


def early_bird_distance(masks_new: MaskSet, masks_old: Mapping[str, Tensor]) -> float:
    """Normalised Hamming distance over all layers concatenated: 1 - equal / total."""
    return masks_new.hamming_distance(masks_old)


class EarlyBirdDetector:
    """FIFO of the last `window` masks (one per epoch). `update` returns True when the window is full and
    the newest mask is within `threshold` of every older one in it. The earliest it can fire is the
    `window`-th update. Every update is recorded in `curve` for plotting and the report.
    """

    def __init__(self, window: int = 5, threshold: float = 0.08):
        if window < 2:
            raise ValueError(f"window must be at least 2, got {window}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.window = window
        self.threshold = threshold
        self.queue: list[MaskSet] = []
        # One entry per update: distance to the previous mask, and the distances newest -> each older
        # mask in the window (empty until the window is full).
        self.curve: list[dict[str, Any]] = []
        self.fired_at: int | None = None  # 0-based index of the first update that fired

    @property
    def updates(self) -> int:
        return len(self.curve)

    def update(self, masks: MaskSet, *, epoch: int | None = None) -> bool:
        """Push this epoch's mask; True when the early bird has emerged. `epoch` only labels the curve."""
        newest = masks.clone()
        previous = early_bird_distance(newest, self.queue[-1]) if self.queue else None
        self.queue.append(newest)
        if len(self.queue) > self.window:
            self.queue.pop(0)
        window = []
        if len(self.queue) == self.window:
            window = [early_bird_distance(newest, old) for old in self.queue[:-1]]
        fired = bool(window) and max(window) <= self.threshold
        self.curve.append({"update": self.updates, "epoch": epoch, "previous": previous, "window": window,
                           "fired": fired})
        if fired and self.fired_at is None:
            self.fired_at = self.updates - 1
        return fired

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "threshold": self.threshold, "fired_at": self.fired_at,
                "curve": [dict(entry, window=list(entry["window"])) for entry in self.curve],
                "queue": [m.state_dict() for m in self.queue]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["window"] != self.window or state["threshold"] != self.threshold:
            raise ValueError(f"early-bird state has window={state['window']}, threshold={state['threshold']}; "
                             f"this detector has window={self.window}, threshold={self.threshold}")
        self.fired_at = state["fired_at"]
        self.curve = [dict(entry, window=list(entry["window"])) for entry in state["curve"]]
        self.queue = [MaskSet({n: t.clone() for n, t in q.items()}) for q in state["queue"]]
