"""Dynamic sparse training (Flying Bird, Flying Bird+, SET, RigL, MEST, GraNet) for the `rewire` stage.

`registry` (methods by name, the built-ins loaded on first use), `config` (the common `sparsity:` knobs,
presets underneath), `schedule` (when, what fraction), `core` (the prune-and-grow base: how much per
layer and which entries), `methods` (the six registered presets, each with its own settings and extra
state), `state` (everything that changes, one object), `hooks` (the training-loop plug; masks are kept
in force by `pipeline.sparsity.masks.MaskEnforcer`).
"""
from __future__ import annotations

from pipeline.sparsity.dst.config import (SparsityConfig, any_settings_model, fill_from_preset, resolve_sparsity,
                                          validate_sparsity)
from pipeline.sparsity.dst.core import DynamicSparsity, Layer, select_drop_grow
from pipeline.sparsity.dst.hooks import RewireHooks
from pipeline.sparsity.dst.methods import (AdaptiveConfig, GradualConfig, MemoryBoundConfig, build_method,
                                           fbp_signals)
from pipeline.sparsity.dst.registry import METHODS, register
from pipeline.sparsity.dst.schedule import Schedule, cubic_density
from pipeline.sparsity.dst.state import DSTState
from pipeline.sparsity.masks import MaskEnforcer

__all__ = [
    "AdaptiveConfig", "DSTState", "DynamicSparsity", "GradualConfig", "Layer", "METHODS", "MaskEnforcer",
    "MemoryBoundConfig", "RewireHooks", "any_settings_model", "Schedule", "SparsityConfig", "build_method", "cubic_density", "fbp_signals",
    "fill_from_preset", "register", "resolve_sparsity", "select_drop_grow", "validate_sparsity",
]
