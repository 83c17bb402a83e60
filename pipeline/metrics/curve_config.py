"""Security curve: robust accuracy as a function of eps. The evaluate stage's `security_curve:` block and
the typed record it writes to stage.json `metrics.security_curve`. Torch-free (the computation is in
pipeline/metrics/security_curve.py), so reports and `compare` read curves without loading torch.

Step rule: PGD-k at budget eps takes steps of `step_factor * eps / k` (default 2.5 * eps / k, Madry et al.
2018): k steps then cover 2.5 eps, enough to cross the box from any random start and still move along its
faces, whatever eps is. At eps 0 the box is the image itself, so the point is the clean accuracy of the
same images (no attack runs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.engine.errors import CheckpointError
from pipeline.engine.schema import Ratio, StrictModel
from pipeline.engine.section import Section
from pipeline.metrics.autoattack_config import AutoAttackConfig

DEFAULT_EPS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255)


class SecurityCurveConfig(StrictModel):
    """The evaluate stage's `security_curve:` block: L-inf PGD-k (and optionally AutoAttack) at each eps."""

    eps: list[Ratio] = Field(default_factory=lambda: list(DEFAULT_EPS), min_length=1,
                             description="budgets, numbers or 'k/255' strings (default 0, 1, 2, 4, 8, 16 /255)")
    steps: int = Field(default=20, gt=0, description="PGD steps k at every eps")
    step_factor: float = Field(default=2.5, gt=0, description="step = step_factor * eps / steps")
    restarts: int = Field(default=1, ge=1, description="an image counts as robust only if it survives every restart")
    random_start: bool = True
    split: Literal["test", "val"] = "test"
    limit: int | None = Field(default=None, gt=0, description="first N images of the split (default: the "
                              "stage's test_limit / val_limit)")
    autoattack: AutoAttackConfig | None = Field(default=None, description="also AutoAttack per eps > 0: {version, "
                                                "n (default 10000), backend, on_missing, batch_size}")

    @field_validator("eps")
    @classmethod
    def _budgets(cls, value: list[float]) -> list[float]:
        bad = [e for e in value if not 0 <= e <= 1]
        if bad:
            raise ValueError(f"every eps must lie in [0, 1] (pixels are in [0, 1]; write 8/255, not 8), got {bad[0]:g}")
        rounded = [round(e * 255, 6) for e in value]
        if len(set(rounded)) != len(rounded):
            raise ValueError(f"eps values must be distinct, got {[f'{r:g}/255' for r in rounded]}")
        return sorted(value)

    @field_validator("autoattack")
    @classmethod
    def _curve_sets_the_budget(cls, value: AutoAttackConfig | None) -> AutoAttackConfig | None:
        # a resolved config writes the defaults back: only a different value is a conflict
        default = AutoAttackConfig()
        written = sorted(k for k in ("eps", "name", "norm", "splits")
                         if value is not None and getattr(value, k) != getattr(default, k))
        if written:
            raise ValueError(f"{', '.join(written)}: set by the curve (L-inf at each of its eps, on its split); "
                             "remove from the autoattack block")
        return value

    @model_validator(mode="after")
    def _step_within_box(self):
        if self.step_factor > self.steps:
            raise ValueError(f"step_factor: {self.step_factor:g} / steps {self.steps} gives a step larger than eps "
                             f"(step = step_factor * eps / steps); use step_factor <= steps")
        return self

    def step(self, eps: float) -> float:
        return min(self.step_factor * eps / self.steps, eps)  # step_factor == steps must not round above eps

    def rule(self) -> str:
        return f"step = {self.step_factor:g} * eps / {self.steps}"


@dataclass
class CurvePoint(Section):
    """One eps of a curve: PGD RA (%), its step, and AutoAttack RA with its own n when it ran."""

    eps: float
    pgd: float
    step: float
    autoattack: float | None = None
    autoattack_n: int | None = None


@dataclass
class SecurityCurve(Section):
    """stage.json `metrics.security_curve`: robust accuracy against eps on one split."""

    SECTION: ClassVar[str] = "security_curve"

    split: str
    n: int  # images behind every PGD point (and the eps-0 clean point)
    attack: dict[str, Any]  # kind pgd, steps, step_factor, restarts, random_start
    rule: str  # the step rule in words
    points: list[CurvePoint] = field(default_factory=list)
    autoattack: dict[str, Any] | None = None  # version, backend; or skipped: reason

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["points"] = [p.to_json() for p in self.points]
        return out

    @classmethod
    def from_json(cls, data: Any, where: str | None = None) -> SecurityCurve | None:
        if isinstance(data, dict) and isinstance(data.get("points"), list):
            where = where or cls.SECTION
            points = [CurvePoint.from_json(p, f"{where}.points[{i}]") for i, p in enumerate(data["points"])]
            return super().from_json({**data, "points": points}, where)
        if isinstance(data, dict) and "points" in data:
            raise CheckpointError(f"{where or cls.SECTION}.points: expected a list, "
                                  f"got {type(data['points']).__name__}")
        return super().from_json(data, where)

    def label(self) -> str:
        restarts = int(self.attack.get("restarts", 1))
        return f"PGD-{self.attack.get('steps', '?')}" + (f"×{restarts}" if restarts > 1 else "")
