"""`MaskHooks`: keep a fixed mask in force while a model trains (tickets, fine-tuning a sparse model).

After every optimizer step the masked weights and their optimizer state are re-zeroed through one
`MaskEnforcer` built at the start (its (weight, mask) pairs cached, dense layers skipped), so the cost
per step is the multiplies alone. The dynamic methods' `RewireHooks` uses the same enforcer and
refreshes it when the topology changes.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.engine import distributed
from pipeline.sparsity.masks import MaskEnforcer, MaskSet
from pipeline.train.hooks import TrainingHooks


class MaskHooks(TrainingHooks):
    """Training hooks that keep `masks` (None = dense: nothing to keep) exactly in force."""

    def __init__(self, masks: MaskSet | None = None):
        self.masks = masks
        self.enforcer: MaskEnforcer | None = None
        self._densities: dict[str, float] | None = None

    def on_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        if self.masks is not None:
            distributed.sync_masks(self.masks, "fixed masks at the start of training")
            self.enforcer = self.masks.enforcer(model, optimizer)
            self.enforcer()
            self._densities = self.masks.layer_densities()  # the mask never changes while this trains

    def after_step(self, step: int) -> None:
        if self.enforcer is not None:
            self.enforcer()

    def densities(self) -> dict[str, float] | None:
        if self.masks is None:
            return None
        if self._densities is None:
            self._densities = self.masks.layer_densities()
        return self._densities
