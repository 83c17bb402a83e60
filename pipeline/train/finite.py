"""Stop a stage whose training diverged, instead of training on with `loss nan` for the rest of the run.

Cheap by construction: the loss is checked where the loop already folds it to the host, plus every
CHECK_EVERY steps (one scalar sync); the weights are checked just before each progress save, so a
save never holds non-finite weights and the last good one survives the stop.
"""
from __future__ import annotations

import math

import torch

from pipeline.engine.errors import StageFailed

CHECK_EVERY = 50  # steps between loss checks inside an epoch (one host sync each)


class NonFiniteTraining(StageFailed):
    """Training produced a non-finite loss or weight (exit 5: the stage's own check)."""


def _hint(cfg) -> str:
    opt = cfg.optimizer
    return (f"likely cause: optimizer.lr ({opt.lr:g}) or optimizer.weight_decay ({opt.weight_decay:g}) too "
            f"large for this model, or precision: {cfg.precision}; the last good progress save is kept, but "
            "resuming with the same config diverges again: change the config (the stage then starts over)")


def check_loss(stage: str, loss_sum: torch.Tensor | float, epoch: int, step: int, cfg) -> None:
    value = float(loss_sum)
    if not math.isfinite(value):
        raise NonFiniteTraining(f"stage {stage!r} stopped: the training loss is {value} in epoch {epoch + 1} "
                                f"(noticed at step {step}); {_hint(cfg)}")


def check_weights(stage: str, model: torch.nn.Module, step: int, cfg) -> None:
    flags = torch.stack([torch.isfinite(p).all() for p in model.parameters()])
    if bool(flags.all()):
        return
    bad = [n for (n, _), ok in zip(model.named_parameters(), flags.tolist()) if not ok]
    raise NonFiniteTraining(f"stage {stage!r} stopped: weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} "
                            f"hold inf/nan after training step {step}; {_hint(cfg)}")
