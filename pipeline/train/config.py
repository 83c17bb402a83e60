"""The training keys every training stage shares (`TrainingConfig` and its blocks), without torch, so that
`pipeline validate` need not import it; `pipeline.train.loop` runs them."""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from pipeline.metrics.attack_config import FGSM_RS_STEP_FACTOR, AttackConfig
from pipeline.engine.schema import Ratio, StrictModel

# history keys the best epoch is chosen on, in order of preference (val RA, else val SA)
SELECTION_KEYS = ("val_ra", "val_sa")


class OptimizerConfig(StrictModel):
    name: Literal["sgd"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    nesterov: bool = False


class ScheduleConfig(StrictModel):
    """Learning rate as a pure function of training progress (so there is no scheduler state to lose)."""

    kind: Literal["multistep", "cosine", "cyclic", "constant"] = "multistep"
    milestones: list[int] = Field(default_factory=lambda: [100, 150], description="multistep: epochs where lr *= gamma")
    gamma: float = Field(default=0.1, gt=0)
    peak_fraction: float = Field(default=0.4, gt=0, lt=1, description="cyclic: lr rises 0 -> lr until this fraction of training, then falls to 0")
    min_lr: float = Field(default=0.0, ge=0, description="cosine: final lr")


class EvalConfig(StrictModel):
    every: int = Field(default=1, ge=1, description="evaluate val/test every N epochs (and always after the last)")
    val_limit: int | None = Field(default=None, gt=0, description="evaluate on the first N val images only")
    test_limit: int | None = Field(default=None, gt=0, description="evaluate on the first N test images only")
    batch_size: int = Field(default=256, gt=0)
    robust: bool = Field(default=True, description="also measure RA (PGD through advertorch); off: SA only")
    attack: AttackConfig = Field(default_factory=lambda: AttackConfig(kind="pgd", steps=20))

    @model_validator(mode="after")
    def _attack_is_an_attack(self):
        if self.attack.kind == "none":
            raise ValueError("attack: kind 'none' would record clean accuracy as RA; use `robust: false` for SA only")
        return self


_RATIO = TypeAdapter(Ratio)
_MODE_TO_ATTACK = {"clean": "none", "fast": "fgsm_rs", "pgd": "pgd"}


def _fast_attack(attack: dict) -> dict:
    """The attack block a `mode: fast` stage trains with: FGSM-RS (spec §2.1), or a ValueError naming the keys.

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
                         f"attack.steps: {attack['steps']} (a PGD attack); drop attack.steps and attack.step, or use mode: pgd")
    reference = FGSM_RS_STEP_FACTOR * eps
    if step is not None and "kind" not in attack and not math.isclose(step, reference, rel_tol=1e-6, abs_tol=1e-12):
        raise ValueError(f"mode: 'fast' uses the FGSM-RS step {FGSM_RS_STEP_FACTOR:g}*eps = {reference * 255:.4g}/255, "
                         f"which contradicts attack.step: {step * 255:.4g}/255 (a PGD step size); drop attack.step, "
                         "or write attack.kind: fgsm_rs next to it to train FGSM-RS with that step")
    return {**attack, "kind": attack.get("kind", "fgsm_rs"), "steps": 1}


class TrainingConfig(StrictModel):
    mode: Literal["clean", "fast", "pgd"] = Field(default="pgd", description="clean training, FGSM-RS fast AT, or PGD AT")
    epochs: int = Field(default=200, gt=0)
    batch_size: int = Field(default=128, gt=0)
    drop_last: bool = False
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig, description="training attack; its kind follows `mode`")
    eval: EvalConfig = Field(default_factory=EvalConfig)
    select: Literal["best", "final"] = Field(default="final", description="weights kept as model.safetensors: best val RA epoch, or the last")
    progress_every_steps: int | None = Field(default=None, gt=0, description="also save progress every N steps (always at each epoch end)")
    max_steps_per_epoch: int | None = Field(default=None, gt=0, description="cap on batches per epoch (smoke runs)")
    precision: Literal["fp32", "bf16"] = Field(default="fp32", description="bf16: autocast for forward/backward and attack")
    channels_last: bool = False
    compile: bool = Field(default=False, description="torch.compile the model (CUDA)")

    @property
    def select_key(self) -> str:
        """The history key the best epoch is chosen on: val RA, or val SA when evaluation measures no RA."""
        return SELECTION_KEYS[0] if self.eval.robust else SELECTION_KEYS[1]

    @model_validator(mode="before")
    @classmethod
    def _fast_is_fgsm_rs(cls, data):
        # only the user's own attack block is judged: a stage type's default attack is not theirs
        if isinstance(data, dict) and data.get("mode", cls.model_fields["mode"].default) == "fast" \
                and isinstance(data.get("attack"), dict):
            data = {**data, "attack": _fast_attack(data["attack"])}
        return data

    @model_validator(mode="after")
    def _attack_follows_mode(self):
        if self.attack.restarts != 1:
            raise ValueError("attack: restarts applies to evaluation attacks only; the training attack runs once")
        wanted = _MODE_TO_ATTACK[self.mode]
        if "kind" in self.attack.model_fields_set and self.attack.kind != wanted:
            raise ValueError(f"attack.kind {self.attack.kind!r} contradicts mode {self.mode!r} (which implies {wanted!r}); set only `mode`")
        if self.attack.kind != wanted:
            fields = self.attack.model_dump(exclude_unset=True)
            fields.pop("kind", None)
            if wanted == "fgsm_rs":
                fields["steps"] = 1  # FGSM-RS is one step whatever was written; the resolved config says so
            object.__setattr__(self, "attack", AttackConfig(kind=wanted, **fields))
        return self
