"""Pydantic building blocks shared by every config section."""
from __future__ import annotations

from fractions import Fraction
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _parse_ratio(value):
    """Accept 0.031, 8/255 written as the string "8/255", or an int/float."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected a number or a fraction like '8/255', got {value!r}") from None
    return value


# A float that may be written as a fraction string in YAML ("8/255"), as papers state eps.
Ratio = Annotated[float, BeforeValidator(_parse_ratio)]
