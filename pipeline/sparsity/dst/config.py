"""The `sparsity:` block of a rewire stage: every knob of dynamic sparse training, filled from the method preset.

A user writes only what differs from the preset (`method: rigl` plus, say, `sparsity: {grow: random}`);
`fill_from_preset` merges the preset underneath before validation, so the resolved config (config.yaml,
stage.json) shows every value actually used. The three sub-blocks belong to one mechanism each and are
set only for the methods that read them: `adaptive` (Flying Bird+), `memory_bound` (MEST), `gradual`
(GraNet); naming one for another method is a config error.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.engine.schema import StrictModel

Allocation = Literal["uniform", "erk", "er", "igq"]
EXTENSIONS = ("adaptive", "memory_bound", "gradual")


class AdaptiveConfig(StrictModel):
    """Flying Bird+ (spec §3.5): extra pruning while the robust gap grows, extra growth while the val
    robust loss stops falling. Signals come from the last `window` + 1 per-epoch values."""

    start_epoch: int = Field(ge=0, description="0-based epoch from which the signals act (reference: 100 of 200)")
    window: int = Field(ge=1, description="number of consecutive per-epoch differences looked at (reference: 4)")
    prune_ratio: float = Field(ge=0, description="extra prune = ceil(drop_fraction * prune_ratio * active) per layer")
    growth_ratio: float = Field(ge=0, description="regrowth = (1 + growth_ratio) x the normal count")
    prune_threshold: float = Field(ge=0, le=1, description="extra prune when the fraction of rising gaps >= this")
    grow_threshold: float = Field(ge=0, le=1, description="extra growth when the fraction of non-falling losses >= this")
    min_density: float = Field(ge=0, le=1, description="global density floor for extra pruning (reference: none = 0)")
    max_density: float = Field(ge=0, le=1, description="global density ceiling for extra growth (reference: none = 1)")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_density > self.max_density:
            raise ValueError(f"min_density: {self.min_density} is above max_density {self.max_density}")
        return self


class MemoryBoundConfig(StrictModel):
    """MEST soft memory bound: grow first (density rises above target), prune back after a while."""

    bound: float = Field(gt=0, le=1, description="growth per update is at most this fraction of the layer's target count")
    prune_after: float = Field(gt=0, lt=1, description="fraction of the update interval the grown weights train before the prune-back")


class GradualConfig(StrictModel):
    """GraNet: cubic global magnitude pruning from `initial_density` down to `density`, with regeneration."""

    initial_density: float = Field(gt=0, le=1, description="density at the start (>= the stage's density)")
    start_fraction: float = Field(ge=0, lt=1, description="fraction of training where gradual pruning starts")
    end_fraction: float = Field(gt=0, le=1, description="fraction of training where the target density is reached")

    @model_validator(mode="after")
    def _window(self):
        if self.end_fraction <= self.start_fraction:
            raise ValueError(f"end_fraction: {self.end_fraction} must be above start_fraction {self.start_fraction}")
        return self


class SparsityConfig(StrictModel):
    """When to rewire, how much per layer, and which entries; defaults come from the method preset."""

    init: Allocation = Field(description="per-layer density allocation at the start")
    init_positions: Literal["random", "magnitude"] = Field(
        description="which entries each layer keeps at the start: random under the run seed, or largest |w| of the input model")
    dense_first: bool = Field(description="keep the first conv dense (counted in the global density, never rewired)")
    dense_last: bool = Field(description="keep the classifier dense (counted in the global density, never rewired)")
    update_every: int = Field(gt=0, description="topology update interval, in `update_unit`s")
    update_unit: Literal["steps", "epochs"] = Field(description="unit of update_every and second_update_every")
    second_update_every: int | None = Field(gt=0, description="interval used after second_after_epoch (null: none)")
    second_after_epoch: int | None = Field(ge=0, description="0-based epochs > this use second_update_every (reference: epochs/2)")
    drop_fraction: float = Field(ge=0, le=1, description="fraction of a layer's active weights dropped at the first update")
    drop_fraction_min: float = Field(ge=0, le=1, description="cosine decay floor")
    drop_decay: Literal["cosine", "constant"] = Field(description="cosine: from drop_fraction to drop_fraction_min over the updating window")
    stop_fraction: float | None = Field(gt=0, le=1, description="no prune-and-grow after this fraction of training (RigL's T_end); null: never stop")
    grow: Literal["random", "gradient"] = Field(description="random (SET, Flying Bird) or largest dense |grad| of the last batch (RigL)")
    adaptive: AdaptiveConfig | None = Field(description="Flying Bird+ only")
    memory_bound: MemoryBoundConfig | None = Field(description="MEST only")
    gradual: GradualConfig | None = Field(description="GraNet only")

    @model_validator(mode="after")
    def _consistent(self):
        if (self.second_update_every is None) != (self.second_after_epoch is None):
            raise ValueError("second_update_every: set it together with second_after_epoch (or neither)")
        if self.drop_fraction_min > self.drop_fraction:
            raise ValueError(f"drop_fraction_min: {self.drop_fraction_min} is above drop_fraction {self.drop_fraction}")
        return self


def _merge(preset: dict, user: dict) -> dict:
    out = dict(preset)
    for key, value in user.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def fill_from_preset(method: Any, raw_sparsity: Any, *, epochs: Any) -> Any:
    """The user's sparsity block with the method preset underneath. Anything unexpected (unknown method,
    a non-mapping) is returned untouched so the field validators report it with its path."""
    from pipeline.sparsity.dst.methods import METHODS

    cls = METHODS.get(method) if isinstance(method, str) else None
    if cls is None or not (raw_sparsity is None or isinstance(raw_sparsity, dict)):
        return raw_sparsity
    user = dict(raw_sparsity or {})
    misplaced = [k for k in EXTENSIONS if user.get(k) is not None and k not in cls.extensions]
    if misplaced:
        users = {k: [n for n, c in METHODS.items() if k in c.extensions] for k in misplaced}
        raise ValueError("sparsity: " + "; ".join(f"{k} is read only by {', '.join(users[k])}, not by {method}"
                                                  for k in misplaced))
    preset = cls.preset(epochs if isinstance(epochs, int) and epochs > 0 else 200)
    return _merge(preset, user)


def resolve_sparsity(method: str, *, epochs: int = 200, **overrides: Any) -> SparsityConfig:
    """SparsityConfig of a method's preset with some keys replaced (tests, benchmarks, scripts)."""
    return SparsityConfig.model_validate(fill_from_preset(method, overrides, epochs=epochs))
