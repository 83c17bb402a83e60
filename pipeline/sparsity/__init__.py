"""Sparsity core shared by static (lottery tickets, early bird) and dynamic (SET/RigL/Flying Bird) methods.

"How much" per layer lives in `allocation`, "which" entries in `select` (exact top-k / exact random),
masks and their enforcement during training in `masks`, magnitude/random mask builders in `magnitude`,
early-bird detection in `early_bird`, nni criteria in `nni_criteria` (imported on demand: nni is slow to load).
"""
from __future__ import annotations

from pipeline.sparsity.allocation import ALLOCATORS, erk, get_allocator, igq, uniform
from pipeline.sparsity.early_bird import EarlyBirdDetector, early_bird_distance
from pipeline.sparsity.magnitude import global_magnitude_masks, imp_round_density, layerwise_magnitude_masks, random_masks
from pipeline.sparsity.masks import MaskEnforcer, MaskSet, attach_mask_hooks, prunable_params
from pipeline.sparsity.select import derived_generator, random_mask, topk_mask

__all__ = [
    "ALLOCATORS", "EarlyBirdDetector", "MaskEnforcer", "MaskSet", "attach_mask_hooks", "derived_generator", "early_bird_distance",
    "erk", "get_allocator", "global_magnitude_masks", "igq", "imp_round_density", "layerwise_magnitude_masks",
    "prunable_params", "random_mask", "random_masks", "topk_mask", "uniform",
]
