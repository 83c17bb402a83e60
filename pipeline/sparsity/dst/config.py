"""The `sparsity:` block of a rewire stage: every knob of dynamic sparse training, filled from the method preset.

A user writes only what differs from the preset (`method: rigl` plus, say, `sparsity: {grow: random}`);
`fill_from_preset` merges the preset underneath before validation, so the resolved config (config.yaml,
stage.json) shows every value actually used. `SparsityConfig` holds the knobs every method reads; a
method with knobs of its own declares them in its `Settings` class (a SparsityConfig subclass adding
one sub-block, e.g. Flying Bird+'s `adaptive`), so a new method never edits this file. Naming another
method's sub-block is a config error that says which method reads it.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, create_model, model_validator

from pipeline.engine.schema import StrictModel
from pipeline.sparsity.dst.registry import METHODS

Allocation = Literal["uniform", "erk", "erk_uncapped", "er", "igq", "igq_int"]
DEFAULT_EPOCHS = 200  # a preset needs the epoch count before the stage's own `epochs` is known to be valid


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
    drop_count: Literal["ceil", "floor"] = Field(
        description="per-layer drop count from drop_fraction x active: ceil (sparselearning, Flying Bird: at least one "
                    "swap per update) or floor (google-research/rigl's int(): no swap once the product is below 1)")
    stop_fraction: float | None = Field(gt=0, le=1, description="no prune-and-grow after this fraction of training (RigL's T_end); null: never stop")
    grow: Literal["random", "gradient"] = Field(description="random (SET, Flying Bird) or largest dense |grad| of the last batch (RigL)")
    grow_count: Literal["exact", "bernoulli"] = Field(
        description="random growth: exactly the planned count, or each inactive entry switched on with probability "
                    "count / inactive (sparselearning: the count only in expectation, so the density drifts)")

    @model_validator(mode="after")
    def _consistent(self):
        if (self.second_update_every is None) != (self.second_after_epoch is None):
            raise ValueError("second_update_every: set it together with second_after_epoch (or neither)")
        if self.grow_count == "bernoulli" and self.grow != "random":
            raise ValueError("grow_count: bernoulli is the random growth of sparselearning; it needs grow: random")
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


def _readers(key: str) -> list[str]:
    return [n for n, c in METHODS.specs() if key in c.Settings.model_fields]


def fill_from_preset(method: Any, raw_sparsity: Any, *, epochs: Any) -> Any:
    """The user's sparsity block with the method preset underneath. Anything unexpected (unknown method,
    a non-mapping) is returned untouched so the field validators report it with its path."""
    if method not in METHODS or not (raw_sparsity is None or isinstance(raw_sparsity, dict)):
        return raw_sparsity
    cls = METHODS.spec(method)
    own = cls.Settings.model_fields
    user, misplaced = {}, []
    for key, value in (raw_sparsity or {}).items():
        if key not in own and _readers(key):
            if value is not None:  # `adaptive: null` under rigl says "none", which is what rigl reads
                misplaced.append(key)
            continue
        user[key] = value  # a key no method reads is left for `extra="forbid"` to report
    if misplaced:
        raise ValueError("; ".join(f"{k} is read only by {', '.join(_readers(k))}, not by {method}" for k in misplaced))
    preset = cls.preset(epochs if isinstance(epochs, int) and epochs > 0 else DEFAULT_EPOCHS)
    return _merge(preset, user)


def validate_sparsity(method: str, raw_sparsity: Any, *, epochs: Any) -> SparsityConfig:
    """The method's own `Settings`, validated from the user's block over its preset."""
    return METHODS.spec(method).Settings.model_validate(fill_from_preset(method, raw_sparsity, epochs=epochs))


def any_settings_model() -> type[SparsityConfig]:
    """One model naming every registered method's own sub-blocks (each optional). It only describes the
    keys (did-you-mean in config errors, `pipeline stages`); a stage's block is validated as its own
    method's `Settings` (`validate_sparsity`)."""
    own: dict[str, Any] = {}
    for _, cls in METHODS.specs():
        for key, info in cls.Settings.model_fields.items():
            if key not in SparsityConfig.model_fields and key not in own:
                own[key] = (info.annotation | None, Field(default=None, description=info.description))
    return create_model("AnySparsityConfig", __base__=SparsityConfig, **own)


def resolve_sparsity(method: str, *, epochs: int = DEFAULT_EPOCHS, **overrides: Any) -> SparsityConfig:
    """Settings of a method's preset with some keys replaced (tests, benchmarks, scripts)."""
    return validate_sparsity(method, overrides, epochs=epochs)
