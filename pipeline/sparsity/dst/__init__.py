"""Dynamic sparse training (Flying Bird, Flying Bird+, SET, RigL, MEST, GraNet) for the `rewire` stage.

`config` (the `sparsity:` block, presets underneath), `schedule` (when, what fraction), `core` (the
prune-and-grow base: how much per layer and which entries), `methods` (the six registered presets),
`state` (everything that changes, one object), `enforce` (masks kept in force each step), `hooks`
(the training-loop plug).
"""
from __future__ import annotations

from pipeline.sparsity.dst.config import AdaptiveConfig, GradualConfig, MemoryBoundConfig, SparsityConfig, fill_from_preset, resolve_sparsity
from pipeline.sparsity.dst.core import METHODS, DynamicSparsity, Layer, register, select_drop_grow
from pipeline.sparsity.masks import MaskEnforcer
from pipeline.sparsity.dst.hooks import RewireHooks
from pipeline.sparsity.dst.methods import build_method, fbp_signals
from pipeline.sparsity.dst.schedule import Schedule, cubic_density
from pipeline.sparsity.dst.state import DSTState

__all__ = [
    "AdaptiveConfig", "DSTState", "DynamicSparsity", "GradualConfig", "Layer", "METHODS", "MaskEnforcer",
    "MemoryBoundConfig", "RewireHooks", "Schedule", "SparsityConfig", "build_method", "cubic_density", "fbp_signals",
    "fill_from_preset", "register", "resolve_sparsity", "select_drop_grow",
]
