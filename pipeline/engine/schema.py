"""Pydantic building blocks shared by every config section."""
from __future__ import annotations

from fractions import Fraction
from typing import Annotated

import typing

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator


def _takes_bool(annotation) -> bool:
    if annotation is bool:
        return True
    return any(_takes_bool(a) for a in typing.get_args(annotation))


def _takes_number(annotation) -> bool:
    if annotation in (int, float):
        return True
    return any(_takes_number(a) for a in typing.get_args(annotation))


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment,
    inf/nan are refused in every float, and `true`/`false` are refused where a number is expected
    (pydantic would quietly read `epochs: true` as 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(),
                              allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data):
        if isinstance(data, dict):
            for key, value in data.items():
                info = cls.model_fields.get(key) if isinstance(key, str) else None
                if isinstance(value, bool) and info is not None and _takes_number(info.annotation) \
                        and not _takes_bool(info.annotation):
                    raise ValueError(f"{key}: expected a number, got a boolean ({str(value).lower()})")
        return data


def _parse_ratio(value):
    """Accept 0.031, 8/255 written as the string "8/255", or an int/float."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number or a fraction like '8/255', got a boolean ({str(value).lower()})")
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected a number or a fraction like '8/255', got {value!r}") from None
    return value


# A float that may be written as a fraction string in YAML ("8/255"), as papers state eps.
Ratio = Annotated[float, BeforeValidator(_parse_ratio)]
