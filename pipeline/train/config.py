"""The training keys every training stage shares (`TrainingConfig` and its blocks), without torch, so that
`pipeline validate` need not import it; `pipeline.train.loop` runs them."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.metrics.attack_config import AttackConfig
from pipeline.engine.schema import StrictModel

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


_MODE_TO_ATTACK = {"clean": "none", "fast": "fgsm_rs", "pgd": "pgd"}


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
