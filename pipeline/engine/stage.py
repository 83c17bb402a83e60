"""The stage contract: a Config (the YAML keys of that stage) and run(ctx)."""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from pipeline.engine.schema import StrictModel

if TYPE_CHECKING:
    from pipeline.engine.context import StageContext


class StageConfig(StrictModel):
    """Keys every stage has. Subclasses add their own fields; unknown keys are errors."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="folder name of this stage in the run directory")
    type: str = Field(description="registered stage type")
    input: str | None = Field(
        default=None,
        description="stage whose outputs this one reads; default: the previous stage (none for stages that start from scratch)",
    )


class Stage:
    """Subclass, set `Config`, implement `run(ctx)`, and register under `pipeline.stages`."""

    Config: ClassVar[type[StageConfig]] = StageConfig
    # Whether the stage reads a previous stage. "optional" stages start from scratch unless `input` is set.
    input_mode: ClassVar[str] = "required"  # "required" | "optional" | "none"
    summary: ClassVar[str] = ""
    # Under torchrun: True = every rank runs the stage (it trains or evaluates collectively); False = rank 0
    # runs it alone while the others wait (plugins default to that: they need not know about ranks).
    collective: ClassVar[bool] = False

    @classmethod
    def follow_input(cls, config: StageConfig, input_type: str) -> None:
        """Defaults that depend on the type of the input stage, set in place on a validated config (e.g.
        finetune after early_bird takes Robust Bird's stage-2 milestones). Touch only keys the user did not
        write (pydantic's model_fields_set), and leave them out of it so they still read as defaults."""

    def run(self, ctx: StageContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError
