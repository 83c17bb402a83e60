"""Dynamic sparse training (Flying Bird, Flying Bird+, SET, RigL, MEST, GraNet) for the `rewire` stage.

`registry` (methods by name, the built-ins loaded on first use), `presets` (each built-in method's own
settings, preset and config-time check, without torch), `config` (the common `sparsity:` knobs, presets
underneath), `schedule` (when, what fraction), `core` (the prune-and-grow base: how much per layer and
which entries), `methods` (the six registered methods, each its preset's behaviour and extra state), `state` (everything that changes, one object), `hooks` (the training-loop plug; masks are kept
in force by `pipeline.sparsity.masks.MaskEnforcer`).
"""
from __future__ import annotations

from pipeline.engine.lazy import lazy_exports
from pipeline.sparsity.dst.config import (SparsityConfig, any_settings_model, fill_from_preset, resolve_sparsity,
                                          validate_sparsity)
from pipeline.sparsity.dst.presets import AdaptiveConfig, GradualConfig, MemoryBoundConfig
from pipeline.sparsity.dst.registry import METHODS, register
from pipeline.sparsity.dst.schedule import Schedule, cubic_density

# The implementations (torch) load on first use: the rewire stage's config validates without them.
__getattr__, __dir__ = lazy_exports(__name__, {
    "DynamicSparsity": "pipeline.sparsity.dst.core", "Layer": "pipeline.sparsity.dst.core",
    "select_drop_grow": "pipeline.sparsity.dst.core", "RewireHooks": "pipeline.sparsity.dst.hooks",
    "build_method": "pipeline.sparsity.dst.methods", "fbp_signals": "pipeline.sparsity.dst.methods",
    "DSTState": "pipeline.sparsity.dst.state", "MaskEnforcer": "pipeline.sparsity.masks",
})

__all__ = [
    "AdaptiveConfig", "DSTState", "DynamicSparsity", "GradualConfig", "Layer", "METHODS", "MaskEnforcer",
    "MemoryBoundConfig", "RewireHooks", "any_settings_model", "Schedule", "SparsityConfig", "build_method", "cubic_density", "fbp_signals",
    "fill_from_preset", "register", "resolve_sparsity", "select_drop_grow", "validate_sparsity",
]
