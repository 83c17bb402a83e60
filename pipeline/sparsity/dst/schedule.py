"""When the topology changes and by how much: pure functions of the step, so nothing here needs saving.

Steps are the training loop's 0-based global step indices. Like the reference code, an update follows
the optimizer step at which the iteration counter c = step + 1 is a multiple of the current interval,
and the drop fraction at that update is read at c (spec §3.3-3.4). With 352 steps per epoch, 200
epochs, 900 / 1200 after epoch 100 this gives the reference's 39 + 29 = 68 updates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.sparsity.dst.config import SparsityConfig


@dataclass(frozen=True)
class Schedule:
    steps_per_epoch: int
    total_steps: int
    update_every: int  # steps
    second_update_every: int | None = None  # steps
    second_after_epoch: int | None = None
    drop_fraction: float = 0.5
    drop_fraction_min: float = 0.0
    drop_decay: str = "cosine"
    stop_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1 or self.total_steps < 1 or self.update_every < 1:
            raise ValueError(f"steps_per_epoch, total_steps and update_every must be >= 1 ({self})")
        if self.drop_decay not in ("cosine", "constant"):
            raise ValueError(f"drop_decay must be 'cosine' or 'constant', got {self.drop_decay!r}")

    @classmethod
    def from_settings(cls, s: SparsityConfig, *, steps_per_epoch: int, epochs: int) -> Schedule:
        unit = steps_per_epoch if s.update_unit == "epochs" else 1
        return cls(steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * epochs,
                   update_every=s.update_every * unit,
                   second_update_every=None if s.second_update_every is None else s.second_update_every * unit,
                   second_after_epoch=s.second_after_epoch, drop_fraction=s.drop_fraction,
                   drop_fraction_min=s.drop_fraction_min, drop_decay=s.drop_decay, stop_fraction=s.stop_fraction)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def interval(self, step: int) -> int:
        """Update interval in force at `step`: the second one in epochs after `second_after_epoch`."""
        if self.second_update_every is not None and self.epoch_of(step) > self.second_after_epoch:
            return self.second_update_every
        return self.update_every

    @property
    def stop_counter(self) -> int | None:
        """Last iteration counter at which prune-and-grow may run (RigL's T_end), or None."""
        return None if self.stop_fraction is None else math.floor(self.stop_fraction * self.total_steps)

    def is_update(self, step: int) -> bool:
        counter = step + 1
        if self.stop_counter is not None and counter > self.stop_counter:
            return False
        return counter % self.interval(step) == 0

    def drop_fraction_at(self, step: int) -> float:
        """Cosine: min + (start - min) (1 + cos(pi c / H)) / 2 over the horizon H = T_end (or all of training)."""
        if self.drop_decay == "constant":
            return self.drop_fraction
        horizon = self.stop_counter or self.total_steps
        c = min(step + 1, horizon)
        return self.drop_fraction_min + (self.drop_fraction - self.drop_fraction_min) * 0.5 * (1 + math.cos(math.pi * c / horizon))

    def update_steps(self) -> list[int]:
        """Every step with an update, for reports and tests."""
        return [s for s in range(self.total_steps) if self.is_update(s)]


def cubic_density(counter: int, *, start: int, end: int, initial: float, final: float) -> float:
    """GraNet / Zhu & Gupta gradual schedule: d = final + (initial - final) (1 - (c - start)/(end - start))^3,
    held at `initial` before `start` and at `final` from `end` on."""
    if end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    if counter <= start:
        return initial
    if counter >= end:
        return final
    return final + (initial - final) * (1.0 - (counter - start) / (end - start)) ** 3
