"""Early-bird ticket detection (Robust Bird, spec §2.2): stop when successive magnitude masks settle."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from pipeline.engine import distributed
from pipeline.sparsity.magnitude import global_magnitude_masks
from pipeline.sparsity.masks import MaskSet
from pipeline.sparsity.ticket_config import rewind_epoch
from pipeline.sparsity.tickets import TicketHooks, scope_params

if TYPE_CHECKING:
    from stages.early_bird import EarlyBirdConfig


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


class EarlyBirdHooks(TicketHooks):
    """TicketHooks (dense, for the rewind snapshot) plus the per-epoch early-bird check."""

    def __init__(self, cfg: EarlyBirdConfig):
        super().__init__(masks=None, snapshot_epoch=rewind_epoch(cfg.rewind_to))
        self.detector = EarlyBirdDetector(window=cfg.window, threshold=cfg.threshold)
        self.density, self.scope, self.rule = cfg.density, cfg.detect_scope, cfg.detect_rule

    def end_epoch(self, epoch: int, row: dict) -> bool:
        super().end_epoch(epoch, row)
        masks = global_magnitude_masks(scope_params(self.model, scope=self.scope), self.density, rule=self.rule)
        distributed.sync_masks(masks, f"early_bird: detection masks of epoch {epoch + 1}")
        fired = self.detector.update(masks, epoch=epoch + 1)
        entry = self.detector.curve[-1]
        row["eb_distance_previous"] = entry["previous"]
        row["eb_distance_max"] = max(entry["window"]) if entry["window"] else None
        row["eb_distances"] = list(entry["window"])
        return fired

    def state_dict(self) -> dict:
        return {**super().state_dict(), "detector": self.detector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.detector.load_state_dict(state["detector"])
