"""Which weights a ticket keeps (`CriterionConfig`) and rewind points, without torch, so that
`pipeline validate` need not import it; `pipeline.sparsity.tickets` cuts the tickets."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.engine.schema import StrictModel
from pipeline.sparsity.criteria_names import check_criterion, criteria

Scope = Literal["conv", "conv_linear"]
SCOPE_KINDS: dict[str, tuple[str, ...]] = {"conv": ("conv",), "conv_linear": ("conv", "linear")}
_SCOPE_KEYS = ("scope", "dense_first", "dense_last")


class CriterionConfig(StrictModel):
    """Which weights a ticket keeps. Stages subclass it to set their default `scope`."""

    pruner: str = Field(default="global_magnitude", description=f"one of: {', '.join(criteria())} "
                        "(global_magnitude: exact global |w| top-k; taylor: global |w * grad|; level, l1, l2, fpgm: nni)")
    taylor_batches: int = Field(default=8, gt=0, description="taylor: clean training batches the saliency is summed over")
    config_list: list[dict[str, Any]] | None = Field(
        default=None, description="nni v3 config_list (nni pruners only); entries without sparse_ratio get the target sparsity")
    scope: Scope = Field(default="conv_linear", description="prunable weights: conv, or conv and linear")
    dense_first: bool = Field(default=False, description="leave the first conv dense")
    dense_last: bool = Field(default=False, description="leave the classifier dense")

    @field_validator("pruner")
    @classmethod
    def _known_pruner(cls, value: str) -> str:
        return check_criterion(value)

    @model_validator(mode="after")
    def _config_list_for_nni_only(self):
        if self.config_list is None:
            return self
        table = criteria()
        if table[self.pruner] is None:
            nni = ", ".join(n for n, pruner in table.items() if pruner is not None)
            raise ValueError(f"config_list: only used with the nni pruners ({nni}); "
                             f"{self.pruner!r} ranks the weights of `scope`")
        clash = [k for k in _SCOPE_KEYS if k in self.model_fields_set]
        if clash:
            raise ValueError(f"{clash[0]}: config_list already chooses the layers; set one or the other")
        for i, entry in enumerate(self.config_list):
            if not isinstance(entry, dict):
                raise ValueError(f"config_list: entry {i} must be a mapping (nni v3 format)")
        return self



_REWIND = re.compile(r"^(init|pretrained|epoch_([1-9][0-9]*))$")


def rewind_epoch(value: str | None) -> int | None:
    """'init' / 'pretrained' -> 0 (the stage's starting weights), 'epoch_N' -> N, None -> None."""
    if value is None:
        return None
    match = _REWIND.match(value)
    if match is None:
        raise ValueError(f"rewind point must be 'init', 'pretrained' or 'epoch_N' (N >= 1), got {value!r}")
    return int(match.group(2)) if match.group(2) else 0
