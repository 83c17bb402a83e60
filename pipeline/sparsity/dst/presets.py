"""What each built-in method declares for its `sparsity:` block, without torch: its own `Settings`, the
preset its keys default to, the config-time `check` and the tiny-run `example`. The rewire stage's config
validates against these specs (`METHODS.spec(name)`), so `pipeline validate` does not import the
prune-and-grow implementations; each implementation in `dst.methods` subclasses its spec.
"""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from pipeline.engine.schema import StrictModel
from pipeline.sparsity.dst.config import SparsityConfig
from pipeline.sparsity.dst.registry import METHODS


class MethodSpec:
    """A method's configuration side; `DynamicSparsity` (torch) adds the behaviour."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type[SparsityConfig]] = SparsityConfig
    # `sparsity:` overrides that make a tiny test run (2 epochs of 4 steps) rewire a few times; the
    # tests run every registered method with it, so a method without one fails them
    example: ClassVar[dict[str, Any] | None] = None

    @classmethod
    def preset(cls, epochs: int) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def check(cls, settings: SparsityConfig, density: float) -> None:
        """Raise ValueError when the settings cannot reach `density` (run at config validation too)."""


def _spec(name: str):
    def decorate(cls):
        METHODS.register_spec(name, cls)
        return cls
    return decorate


def _common(**kw: Any) -> dict[str, Any]:
    base = {"init": "erk", "init_positions": "random", "dense_first": False, "dense_last": False,
            "update_every": 1000, "update_unit": "steps", "second_update_every": None, "second_after_epoch": None,
            "drop_fraction": 0.5, "drop_fraction_min": 0.005, "drop_decay": "cosine", "drop_count": "ceil",
            "stop_fraction": None, "grow": "random", "grow_count": "exact"}
    return {**base, **kw}


@_spec("flying_bird")
class FlyingBirdSpec(MethodSpec):
    """FlyingBird's `sparsity:` block (the method itself, sourced: `dst.methods.FlyingBird`)."""

    example = {"update_every": 2, "second_update_every": 3, "second_after_epoch": 0}

    @classmethod
    def preset(cls, epochs: int) -> dict[str, Any]:
        return _common(init="igq", update_every=900, second_update_every=1200,
                       second_after_epoch=epochs // 2)


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


@_spec("flying_bird_plus")
class FlyingBirdPlusSpec(FlyingBirdSpec):
    """FlyingBirdPlus's `sparsity:` block (the method itself, sourced: `dst.methods.FlyingBirdPlus`)."""

    class Settings(SparsityConfig):
        adaptive: AdaptiveConfig = Field(description="Flying Bird+'s adaptive density signals")

    example = {"update_every": 2, "second_update_every": None, "second_after_epoch": None,
               "adaptive": {"start_epoch": 1, "window": 1, "prune_threshold": 0.0, "grow_threshold": 0.0}}

    @classmethod
    def preset(cls, epochs: int) -> dict[str, Any]:
        half = epochs // 2
        return {**super().preset(epochs), "adaptive": {
            "start_epoch": half, "window": 4, "prune_ratio": 0.4, "growth_ratio": 0.05,
            "prune_threshold": 0.5, "grow_threshold": 0.5, "min_density": 0.0, "max_density": 1.0}}


@_spec("set")
class SETSpec(MethodSpec):
    """SET's `sparsity:` block (the method itself, sourced: `dst.methods.SET`)."""

    example = {}  # once per epoch

    @classmethod
    def preset(cls, epochs: int) -> dict[str, Any]:
        return _common(init="erk", update_every=1, update_unit="epochs", drop_fraction=0.3,
                       drop_fraction_min=0.0, drop_decay="constant")


@_spec("rigl")
class RigLSpec(MethodSpec):
    """RigL's `sparsity:` block (the method itself, sourced: `dst.methods.RigL`)."""

    example = {"update_every": 2}  # T_end = 75%: updates after steps 1, 3, 5 of 8

    @classmethod
    def preset(cls, epochs: int) -> dict[str, Any]:
        return _common(update_every=100, drop_fraction=0.3, drop_fraction_min=0.0, stop_fraction=0.75,
                       grow="gradient", drop_count="floor")


class MutationPhase(StrictModel):
    start: float = Field(ge=0, lt=1, description="fraction of training from which this phase's growth holds")
    grow: float = Field(ge=0, le=1, description="weights grown per update, as a fraction of the layer's size "
                                               "(MEST's grow-to sparsity = target sparsity - grow)")


class MemoryBoundConfig(StrictModel):
    """MEST soft memory bound: grow first (density rises above target), prune back after a while."""

    bound: float | None = Field(gt=0, le=1, description="growth per update is at most this fraction of the layer's "
                                                        "target count (null: no cap)")
    prune_after: float = Field(gt=0, le=1, description="fraction of the update interval the grown weights train before "
                                                      "the prune-back (1: at the next update, just before it grows again)")
    phases: list[MutationPhase] | None = Field(
        description="piecewise-constant growth per update (MEST's --mask-update-decay-epoch with --upper-bound); "
                    "null: ceil(drop_fraction x target), following the drop_fraction schedule")

    @model_validator(mode="after")
    def _phases_in_order(self):
        if self.phases is not None:
            starts = [p.start for p in self.phases]
            if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
                raise ValueError(f"phases: starts must begin at 0 and increase, got {starts}")
        return self


# MEST's own schedule (boone891214/MEST, scripts/resnet32/EM_S/run_mag_prune_irr_sp_EM_S.sh: 160 epochs,
# --sp-mask-update-freq 5, --mask-update-decay-epoch 90-120, --lower-bound 0.9-0.9-0.9, --upper-bound
# 0.85-0.875-0.9): every 5 epochs prune each layer back to its target and grow 5% of it (2.5% from epoch
# 90, none from epoch 120), the new weights training until the next update.
MEST_PHASES = [{"start": 0.0, "grow": 0.05}, {"start": 90 / 160, "grow": 0.025}, {"start": 120 / 160, "grow": 0.0}]


@_spec("mest")
class MESTSpec(MethodSpec):
    """MEST's `sparsity:` block (the method itself, sourced: `dst.methods.MEST`)."""

    class Settings(SparsityConfig):
        memory_bound: MemoryBoundConfig = Field(description="MEST's soft memory bound")

    example = {"update_every": 2, "update_unit": "steps"}

    @classmethod
    def preset(cls, epochs: int) -> dict[str, Any]:
        return _common(update_every=5, update_unit="epochs",
                       memory_bound={"bound": None, "prune_after": 1.0, "phases": MEST_PHASES})


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


GRANET_END = 110 / 160  # GraNet's --final-prune-epoch 110 of its 160 CIFAR epochs


@_spec("granet")
class GraNetSpec(MethodSpec):
    """GraNet's `sparsity:` block (the method itself, sourced: `dst.methods.GraNet`)."""

    class Settings(SparsityConfig):
        gradual: GradualConfig = Field(description="GraNet's gradual pruning schedule")

    example = {"update_every": 2, "gradual": {"initial_density": 0.8, "end_fraction": 0.5}}

    @classmethod
    def preset(cls, epochs: int) -> dict[str, Any]:
        return _common(grow="gradient",
                       gradual={"initial_density": 0.8, "start_fraction": 0.0, "end_fraction": GRANET_END})

    @classmethod
    def check(cls, settings, density):
        if settings.gradual.initial_density < density:
            raise ValueError(f"gradual.initial_density {settings.gradual.initial_density} is below density "
                             f"{density}; GraNet prunes down to the target, it never grows up to it")
