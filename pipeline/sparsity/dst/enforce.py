"""Keeping masks in force after every optimizer step, cheaply.

Same effect as `MaskSet.enforce_` (zero masked weights and their per-weight optimizer state), with the
(weight, float mask) pairs cached between topology changes, fully dense layers skipped, and one fused
`torch._foreach_mul_` per list instead of a dict rebuild and one multiply per tensor.
"""
from __future__ import annotations

import torch
from torch import Tensor


class MaskEnforcer:
    def __init__(self, pairs: list[tuple[Tensor, Tensor]], optimizer: torch.optim.Optimizer | None = None):
        """`pairs`: (parameter, bool mask of its shape); the masks may change in place, then call refresh()."""
        self.pairs = pairs
        self.optimizer = optimizer
        self.refresh()

    def refresh(self) -> None:
        """Re-read the masks (after a topology change or a restore)."""
        self._params: list[Tensor] = []
        self._masks: list[Tensor] = []
        for p, m in self.pairs:
            if not bool(m.all()):
                self._params.append(p)
                self._masks.append(m.to(p.dtype))

    @torch.no_grad()
    def __call__(self) -> None:
        if not self._params:
            return
        torch._foreach_mul_(self._params, self._masks)
        if self.optimizer is None:
            return
        # Looked up every call: optimizer state appears after the first step and is replaced on a restore.
        states, masks = [], []
        for p, m in zip(self._params, self._masks):
            for value in self.optimizer.state.get(p, {}).values():
                if isinstance(value, Tensor) and value.shape == p.shape:
                    states.append(value)
                    masks.append(m)
        if states:
            torch._foreach_mul_(states, masks)
