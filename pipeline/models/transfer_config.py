"""The `transfer:` block of a finetune stage, without torch (`pipeline validate` reads it);
`pipeline.models.transfer` does the transfer."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.data.config import DataConfig
from pipeline.engine.schema import StrictModel

class TransferConfig(StrictModel):
    """The `transfer:` block of a finetune stage."""

    data: DataConfig = Field(description="dataset B, a full data section (train_fraction / subset / subset_seed "
                                         "give the data-limited 1% and 10% settings)")
    head: Literal["new", "keep"] = Field(
        default="new", description="new: a fresh dense classifier for B's classes; keep: reuse the head (same classes)")
    keep_mask: bool = Field(default=True, description="keep the ticket's backbone mask during fine-tuning "
                                                      "(false: fine-tune every weight, the pruned ones start at 0)")
