"""Sparsity core shared by static (lottery tickets, early bird) and dynamic (SET/RigL/Flying Bird) methods.

"How much" per layer lives in `allocation`, "which" entries in `select` (exact top-k / exact random),
masks and the one cached enforcer that keeps them in force in `masks`, the training-loop hooks of a
fixed mask in `hooks`, the global magnitude top-k in `magnitude`, the static pruning criteria (one
registry of score functions) in `criteria`, early-bird detection in `early_bird`, nni criteria in
`nni_criteria` (nni itself is imported on demand: it is slow to load), dynamic sparse training in `dst`.
"""
from __future__ import annotations

from pipeline.engine.lazy import lazy_exports
from pipeline.engine.seeding import derived_generator
from pipeline.sparsity.allocation import ALLOCATORS, erk, get_allocator, igq, uniform

# The torch modules load on first use: `pipeline validate` imports the torch-free ticket_config and
# dst.config through this package and must not import torch.
__getattr__, __dir__ = lazy_exports(__name__, {
    "EarlyBirdDetector": "pipeline.sparsity.early_bird", "early_bird_distance": "pipeline.sparsity.early_bird",
    "global_magnitude_masks": "pipeline.sparsity.magnitude", "imp_round_density": "pipeline.sparsity.magnitude",
    "MaskEnforcer": "pipeline.sparsity.masks", "MaskSet": "pipeline.sparsity.masks",
    "prunable_params": "pipeline.sparsity.masks",
    "random_mask": "pipeline.sparsity.select", "topk_mask": "pipeline.sparsity.select",
})

__all__ = [
    "ALLOCATORS", "EarlyBirdDetector", "MaskEnforcer", "MaskSet", "derived_generator", "early_bird_distance",
    "erk", "get_allocator", "global_magnitude_masks", "igq", "imp_round_density",
    "prunable_params", "random_mask", "topk_mask", "uniform",
]
