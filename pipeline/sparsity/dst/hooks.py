"""`RewireHooks`: plugs a dynamic sparsity method into the shared training loop.

Per step: after backward, keep the dense gradients when this step's growth reads them; after the
optimizer step, re-zero masked weights and their momentum, then let the method rewire. Per epoch:
track the best epoch's masks, add density, connections changed and the ever-active fraction to the
row (history.jsonl, TensorBoard), and hand the row to the method's own `end_epoch` (Flying Bird+
feeds its signal histories there).

Every change of the masks (the start, each topology event, a restore on resume) goes through
`masks_changed`, the one place that refreshes what depends on them.
"""
from __future__ import annotations

from typing import Any

import torch

from pipeline.engine import distributed
from pipeline.sparsity.dst.core import DynamicSparsity, Layer
from pipeline.sparsity.dst.state import DSTState
from pipeline.sparsity.masks import MaskEnforcer
from pipeline.train.hooks import TrainingHooks


class RewireHooks(TrainingHooks):
    def __init__(self, method: DynamicSparsity, state: DSTState, *, select_key: str = "val_ra"):
        self.method, self.state, self.select_key = method, state, select_key
        self.layers: list[Layer] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.enforcer: MaskEnforcer | None = None
        self._grads: dict[str, torch.Tensor] | None = None
        self._dense_grad_at: int | None = None
        self._densities: dict[str, float] | None = None

    def on_start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        params = dict(model.named_parameters())
        missing = [n for n in self.state.masks if n not in params]
        if missing:
            raise ValueError(f"masks name weights the model does not have: {missing[:3]}")
        self.layers = [Layer(n, i, params[n], self.state.masks[n], frozen=n in self.state.frozen)
                       for i, n in enumerate(self.state.masks)]
        self.optimizer = optimizer
        self.enforcer = MaskEnforcer([(l.param, l.mask) for l in self.layers], optimizer)
        self.masks_changed("start")

    def masks_changed(self, reason: str) -> None:
        """The masks in `state` were just set ("start"), rewired by an event ("update") or restored
        ("resume"): refresh the enforcer's cached pairs and the densities, and put the masks in force."""
        distributed.sync_masks(self.state.masks, f"{self.method.name}: masks at {reason}")
        self._densities = None
        if self.enforcer is not None:
            self.enforcer.refresh()
            if reason == "start":
                self.enforcer()

    def after_backward(self, step: int) -> None:
        if self.method.needs_gradient(step):
            self._grads = {l.name: l.param.grad.detach().clone() for l in self.layers
                           if not l.frozen and l.param.grad is not None}
            self._dense_grad_at = step

    def after_step(self, step: int) -> bool:
        self.enforcer()
        entries = self.method.on_step(step, self.state, self.layers, self.optimizer, self._grads)
        self._grads = None
        if entries:
            self.masks_changed("update")
        return bool(entries)

    def dense_grad_step(self, step: int) -> bool:
        return self._dense_grad_at == step

    def densities(self) -> dict[str, float]:
        if self._densities is None:
            self._densities = self.state.masks.layer_densities()
        return self._densities

    def end_epoch(self, epoch: int, row: dict) -> bool:
        value = row.get(self.select_key)
        if value is not None and value > self.state.best_value:
            # train() kept this epoch's weights as the best; these are the masks that go with them
            self.state.best_value = value
            self.state.best_masks = self.state.masks.clone()
        row.update({"density": self.state.masks.density(), "sparsity_events": self.state.events,
                    "connections_changed": self.state.changed_epoch,
                    "ever_active": self.state.ever_active_fraction()})
        row.update(self.method.end_epoch(self.state, epoch, row))
        self.state.changed_epoch = 0
        return False

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state)
        self.masks_changed("resume")
