"""What the training loop calls into: the `TrainingHooks` base and `cpu_state`.

Kept apart from `loop` (and importing only torch) so that the sparsity library can implement hooks
without depending on the training loop, its metrics or its data pipeline.
"""
from __future__ import annotations

import torch


class TrainingHooks:
    """Override what you need. State returned by state_dict() is saved with the progress.

    `step` is the global optimizer-step index within the stage (0-based), identical after a resume.
    """

    def on_start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def after_backward(self, step: int) -> None:
        """Dense gradients of the effective weights are in `.grad` here (RigL-style growth reads them)."""

    def after_step(self, step: int) -> bool | None:
        """Right after optimizer.step(). Return True when the per-layer densities changed (FLOPs accounting)."""
        return None

    def densities(self) -> dict[str, float] | None:
        """Current kept fraction per weight name (as in model.named_parameters()); None = dense."""
        return None

    def dense_grad_step(self, step: int) -> bool:
        """True when this step needed a dense weight gradient (gradient-based growth), for training FLOPs."""
        return False

    def end_epoch(self, epoch: int, row: dict) -> bool:
        """Called after evaluation with the epoch's history row (it may add keys). Return True to stop."""
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def cpu_state(model: torch.nn.Module) -> dict:
    """A detached CPU copy of the model's state (weights and BN statistics)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
