"""The `corruptions:` block of the evaluate stage, without torch (`pipeline validate` reads it);
`pipeline.corruptions.benchmark` runs it."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.engine.schema import StrictModel

from pipeline.corruptions.catalog import ALL, SEVERITIES

CorruptionName = Literal[ALL]  # type: ignore[valid-type]


class CorruptionConfig(StrictModel):
    """The `corruptions:` block of the evaluate stage."""

    path: Path | None = Field(default=None, description="directory of a published set: <corruption>.npy "
                              "(5 severities x N images, uint8 NHWC) and labels.npy (CIFAR-10-C / CIFAR-100-C layout)")
    generate: bool = Field(default=False, description="generate the corruptions from the test split when `path` "
                           "is unset or absent (labelled 'generated')")
    types: list[CorruptionName] | None = Field(default=None, description="default: all 19 (generated) or every "
                                               "type present in `path`")
    severities: list[int] = Field(default_factory=lambda: list(SEVERITIES))
    limit: int | None = Field(default=None, gt=0, description="first N images per corruption x severity")
    seed: int = Field(default=0, description="generation seed; fixed by default so all runs see the same images")
    backend: Literal["builtin", "imagecorruptions"] = Field(
        default="builtin", description="generator: builtin (CIFAR-10-C parameters, any size) or the optional "
        "imagecorruptions package (ImageNet-C parameters, >= 32 px)")
    batch_size: int | None = Field(default=None, gt=0, description="default: the stage's batch_size")

    @field_validator("severities")
    @classmethod
    def _check_severities(cls, value: list[int]) -> list[int]:
        bad = [s for s in value if s not in SEVERITIES]
        if bad or not value or len(set(value)) != len(value):
            raise ValueError(f"must be distinct values out of {list(SEVERITIES)}, got {value}")
        return sorted(value)

    @field_validator("types")
    @classmethod
    def _check_types(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError(f"must list distinct corruption names, got {value}")
        return value

    @model_validator(mode="after")
    def _source(self):
        if self.path is None and not self.generate:
            raise ValueError("set `path` (a published CIFAR-10-C style directory) or `generate: true`")
        if self.path is not None and not self.path.is_dir() and not self.generate:
            raise ValueError(f"path: directory not found: {self.path}; set `generate: true` to generate the "
                             "corruptions from the test split instead")
        return self
