"""L-inf attacks in [0, 1] pixel space: our fast training PGD / FGSM-RS and advertorch's PGD for evaluation.

`pgd_linf` follows advertorch's `LinfPGDAttack` step for step (uniform start in the eps box clipped
to [0, 1], signed-gradient steps on the summed CE, projection to the box and to [0, 1], the last
iterate is returned) and is checked against it in tests/metrics/test_attacks.py. It differs only in cost:
the gradient is taken w.r.t. the input alone, so no parameter gradient is computed or stored.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

import torch
import torch.nn.functional as F
from pydantic import Field, TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator
from torch import Tensor, nn

from pipeline.metrics.advertorch_compat import import_advertorch
from pipeline.metrics.autoattack import AutoAttackConfig
from pipeline.engine.schema import Ratio, StrictModel

TrainAttack = Callable[[nn.Module, Tensor, Tensor, torch.Generator | None], Tensor]

FGSM_RS_STEP_FACTOR = 1.25  # Wong et al. (2020): step = 1.25 * eps
_RATIO = TypeAdapter(Ratio)


class AttackConfig(StrictModel):
    """One attack: the training attack of a stage or the evaluation attack (which also uses `restarts`)."""

    kind: Literal["pgd", "fgsm_rs", "none"] = "pgd"
    eps: Ratio = Field(8 / 255, ge=0)
    step: Ratio = Field(2 / 255, ge=0)
    steps: int = Field(10, gt=0)
    random_start: bool = True
    restarts: int = Field(1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _fgsm_rs_default_step(cls, data: Any) -> Any:
        # A before-validator so the default step is written into the resolved config; on later
        # assignments `step` is already present and is left alone.
        if isinstance(data, dict) and data.get("kind") == "fgsm_rs" and "step" not in data:
            try:
                eps = _RATIO.validate_python(data.get("eps", 8 / 255))
            except ValidationError:
                return data  # the eps field's own validation reports it
            data = {**data, "step": FGSM_RS_STEP_FACTOR * eps}
        return data

    @field_validator("step")
    @classmethod
    def _pgd_step_positive(cls, step: float, info: ValidationInfo) -> float:
        if info.data.get("kind") == "pgd" and step <= 0:
            raise ValueError(f"must be > 0 for kind 'pgd', got {step}")
        return step

    @model_validator(mode="after")
    def _sizes_make_sense(self):
        # Attacks work on [0, 1] pixels: eps > 1 is an unbounded attack, almost surely 8 written for 8/255.
        if self.eps > 1:
            raise ValueError(f"eps: {self.eps:g} is more than the whole [0, 1] pixel range; write 8/255, not 8")
        if self.kind == "pgd" and self.eps > 0 and self.step > self.eps:
            raise ValueError(f"step: {self.step:.6g} is larger than eps {self.eps:.6g}; every PGD step would jump "
                             "to the box corner (the usual step is eps/4, e.g. 2/255 for 8/255)")
        return self


def fast_at_attack(attack: dict) -> dict:
    """The raw attack block of a `mode: fast` training stage as FGSM-RS (spec §2.1), or a ValueError
    naming the contradicting keys.

    The recipes' PGD block (step 2/255, steps 10) used to become one 2/255 step: a far weaker attack
    than Wong et al.'s 1.25*eps, with nothing said. A written step counts as meant for fast AT only next
    to `kind: fgsm_rs` (or when it is 1.25*eps anyway). Raw values: this runs before field validation,
    so that the block is never judged as a PGD attack (step > eps is normal for FGSM-RS)."""
    try:
        steps = int(attack["steps"]) if "steps" in attack else 1
        eps = _RATIO.validate_python(attack.get("eps", 8 / 255))
        step = _RATIO.validate_python(attack["step"]) if "step" in attack else None
    except (TypeError, ValueError, ValidationError):
        return attack  # the fields' own validation names the bad value
    if steps != 1:
        raise ValueError(f"mode: 'fast' is FGSM-RS (one step of {FGSM_RS_STEP_FACTOR:g}*eps), which contradicts "
                         f"attack.steps: {attack['steps']} (a PGD attack); drop attack.steps and attack.step, "
                         "or use mode: pgd")
    reference = FGSM_RS_STEP_FACTOR * eps
    if step is not None and "kind" not in attack and not math.isclose(step, reference, rel_tol=1e-6, abs_tol=1e-12):
        raise ValueError(f"mode: 'fast' uses the FGSM-RS step {FGSM_RS_STEP_FACTOR:g}*eps = {reference * 255:.4g}/255, "
                         f"which contradicts attack.step: {step * 255:.4g}/255 (a PGD step size); drop attack.step, "
                         "or write attack.kind: fgsm_rs next to it to train FGSM-RS with that step")
    return {**attack, "kind": attack.get("kind", "fgsm_rs"), "steps": 1}


SPLITS = ("train", "val", "test")


class PGDEvalConfig(AttackConfig):
    """An evaluation attack: PGD (advertorch) or FGSM-RS; an example counts as robust only if it survives
    every restart. `label()` is its key in an evaluate stage's metrics['ra']."""

    kind: Literal["pgd", "fgsm_rs"] = "pgd"
    steps: int = Field(20, gt=0)
    name: str | None = Field(default=None, description="label of this figure in metrics['ra'] (default e.g. pgd20, pgd50r5)")
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: list(SPLITS), min_length=1)

    @model_validator(mode="after")
    def _one_step_fgsm(self):
        # FGSM-RS is one step whatever `steps` says; record what runs
        if self.kind == "fgsm_rs" and self.steps != 1:
            if "steps" in self.model_fields_set:
                raise ValueError(f"steps: FGSM-RS takes one step, got {self.steps}; use kind 'pgd' for more")
            object.__setattr__(self, "steps", 1)
        return self

    def label(self) -> str:
        if self.name:
            return self.name
        base = "fgsm_rs" if self.kind == "fgsm_rs" else f"pgd{self.steps}"
        base += f"r{self.restarts}" if self.restarts > 1 else ""
        return base + ("" if abs(self.eps - 8 / 255) < 1e-12 else f"_eps{self.eps * 255:g}")


EvalAttack = Annotated[Union[PGDEvalConfig, AutoAttackConfig], Field(discriminator="kind")]


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
