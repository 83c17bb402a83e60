"""One step of (adversarial) training: craft the batch in train mode, CE on it, SGD update, hooks."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.engine.errors import ConfigError

AUTOCAST_DTYPES = (torch.bfloat16,)  # fp16 would need loss scaling, which this step does not do


@dataclass
class StepOutput:
    """Device tensors, not Python numbers, so the loop does not sync with the GPU every step."""

    loss: Tensor  # mean CE on the batch the weights were updated on, detached
    correct: Tensor  # number of correct predictions on that batch (int64 scalar)
    n: int  # batch size


def adversarial_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, *,
                           attack: Callable | None, generator: torch.Generator | None = None,
                           autocast_dtype: torch.dtype | None = None,
                           after_backward: Callable[[], None] | None = None,
                           after_step: Callable[[], None] | None = None) -> StepOutput:
    """Madry PGD-AT step: x_adv = attack(model, x, y, generator) (x if attack is None), then CE on x_adv.

    The model is put in train mode before the attack (BN batch statistics, as the papers).
    `after_backward` runs with the dense gradients in place, `after_step` right after the update.
    """
    if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
        raise ConfigError(f"autocast_dtype: {autocast_dtype} is not supported; use torch.bfloat16 or None")
    model.train()
    amp = (torch.autocast(device_type=x.device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with amp:
        x_adv = x if attack is None else attack(model, x, y, generator)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if after_backward is not None:
        after_backward()
    optimizer.step()
    if after_step is not None:
        after_step()
    with torch.no_grad():
        correct = (logits.argmax(dim=1) == y).sum()
    return StepOutput(loss=loss.detach(), correct=correct, n=int(y.shape[0]))
