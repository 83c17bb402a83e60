"""Attack configs (a stage's training attack, the evaluation attacks) without torch, so that
`pipeline validate` need not import it; `pipeline.metrics.attacks` runs them."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.metrics.autoattack_config import AutoAttackConfig
from pipeline.engine.schema import Ratio, StrictModel

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
