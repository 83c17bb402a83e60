"""L-inf attacks in [0, 1] pixel space: our fast training PGD / FGSM-RS and advertorch's PGD for evaluation.

`pgd_linf` follows advertorch's `LinfPGDAttack` step for step (uniform start in the eps box clipped
to [0, 1], signed-gradient steps on the summed CE, projection to the box and to [0, 1], the last
iterate is returned) and is checked against it in tests/metrics/test_attacks.py. It differs only in cost:
the gradient is taken w.r.t. the input alone, so no parameter gradient is computed or stored.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.metrics.advertorch_compat import import_advertorch
from pipeline.metrics.attack_config import (  # noqa: F401  (moved; the old names stay importable)
    FGSM_RS_STEP_FACTOR, SPLITS, AttackConfig, EvalAttack, PGDEvalConfig)

TrainAttack = Callable[[nn.Module, Tensor, Tensor, torch.Generator | None], Tensor]


def _check_generator(generator: torch.Generator | None, x: Tensor) -> None:
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device} but the images are on {x.device}")


def _random_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    # The noise is drawn in contiguous layout (so a channels_last batch gets the same start) and as
    # advertorch does it: U(-1, 1) * eps, then x + noise clipped to [0, 1].
    noise = torch.empty(x.shape, dtype=x.dtype, device=x.device).uniform_(-1.0, 1.0, generator=generator)
    noise.mul_(eps)
    x_adv = torch.empty_like(x)
    torch.add(noise, x, out=x_adv)
    return x_adv.clamp_(0.0, 1.0)


def pgd_linf(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, step: float, steps: int,
             random_start: bool = True, generator: torch.Generator | None = None,
             delta_init: Tensor | None = None) -> Tensor:
    """Untargeted L-inf PGD on the summed CE; returns the last iterate x + delta (detached).

    `delta_init` (used as given, like advertorch's `perturb_iterative`) overrides `random_start`.
    The model's train/eval mode is left as the caller set it. Runs under `torch.autocast`: the
    input stays fp32, so its gradient (and sign) is fp32.
    """
    _check_generator(generator, x)
    eps, step = float(eps), float(step)
    x = x.detach()
    # Projecting delta to [-eps, eps] and then x + delta to [0, 1] is one clamp of x_adv to [lo, hi].
    lo = (x - eps).clamp_(min=0.0)
    hi = (x + eps).clamp_(max=1.0)
    if delta_init is not None:
        x_adv = x + delta_init.detach().to(dtype=x.dtype)
    elif random_start:
        x_adv = _random_start(x, eps, generator)
    else:
        x_adv = x.clone()
    x_adv.requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        # Gradient w.r.t. the input only: autograd skips every weight-gradient kernel.
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv.add_(grad.sign_(), alpha=step)
            x_adv.clamp_(min=lo, max=hi)
    return x_adv.detach()


def fgsm_rs(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, step: float | None = None,
            generator: torch.Generator | None = None) -> Tensor:
    """"Fast AT" (Wong et al. 2020): uniform start in the eps box, one signed step of 1.25 * eps."""
    step = FGSM_RS_STEP_FACTOR * float(eps) if step is None else step
    return pgd_linf(model, x, y, eps=eps, step=step, steps=1, random_start=True, generator=generator)


def make_train_attack(cfg: AttackConfig) -> TrainAttack | None:
    """The training attack `attack(model, x, y, generator)` described by `cfg`; None for kind 'none'.

    `restarts` is ignored (training uses one run); FGSM-RS is one step of `cfg.step`.
    """
    if cfg.kind == "none":
        return None
    steps = 1 if cfg.kind == "fgsm_rs" else cfg.steps
    eps, step, random_start = cfg.eps, cfg.step, cfg.random_start

    def attack(model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return pgd_linf(model, x, y, eps=eps, step=step, steps=steps,
                        random_start=random_start, generator=generator)

    return attack


def advertorch_pgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, step: float, steps: int,
                   random_start: bool = True) -> Tensor:
    """Evaluation PGD through advertorch's `LinfPGDAttack` (summed CE, clip [0, 1]).

    Parameters have `requires_grad` off during the attack (advertorch's `ctx_noparamgrad`, as the
    papers' code does), so existing `.grad` tensors are left untouched. The random start draws from
    the global RNG of x's device.
    """
    import_advertorch()
    from advertorch.attacks import LinfPGDAttack
    from advertorch.context import ctx_noparamgrad

    adversary = LinfPGDAttack(model, loss_fn=nn.CrossEntropyLoss(reduction="sum"), eps=float(eps),
                              nb_iter=int(steps), eps_iter=float(step), rand_init=random_start,
                              clip_min=0.0, clip_max=1.0, targeted=False)
    with torch.enable_grad(), ctx_noparamgrad(model):
        return adversary.perturb(x.detach(), y)
