"""The checkpoints a training stage keeps, written and read in one place.

`save_trained` writes model.safetensors (the selected weights) and, when best and final differ, the
other as model_best / model_final.safetensors, and records which file is which in stage.json
`checkpoints` (`CheckpointsRecord`). `kept_checkpoints` reads that record back for a stage that judges
both (evaluate): the selected file first, then the other one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from pipeline.engine.rundir import MODEL, StageRecord, masks_file_for
from pipeline.engine.section import Section
from pipeline.train.loop import TrainResult

Which = Literal["best", "final"]


@dataclass
class CheckpointsRecord(Section):
    """stage.json `checkpoints`: file name -> best | final, and the two epochs."""

    SECTION: ClassVar[str] = "checkpoints"

    files: dict[str, Which]
    best_epoch: int | None
    final_epoch: int

    @property
    def same_weights(self) -> bool:
        """The best epoch is the last one: model.safetensors is both checkpoints."""
        return self.best_epoch is not None and self.best_epoch == self.final_epoch


@dataclass
class Checkpoint:
    which: str  # best | final | unknown (a stage that keeps one model without recording which)
    file: str
    epoch: int | None


def save_trained(ctx, model: torch.nn.Module, card: dict, result: TrainResult, select: str, masks=None,
                 best_masks=None) -> str:
    """model.safetensors (+ masks.safetensors) = the selected weights; the other of best/final is kept
    beside it as model_best / model_final.safetensors (+ .masks.safetensors) so evaluation can judge both.
    `best_masks` is the topology of the best epoch when it differs (dynamic sparsity); default `masks`.
    Returns which checkpoint was selected."""
    best_masks = masks if best_masks is None else best_masks
    chosen = "best" if select == "best" and result.best_state is not None else "final"
    model.load_state_dict(result.chosen_state(chosen))
    ctx.save_model(model, card, masks=best_masks if chosen == "best" else masks)
    files = {MODEL: chosen}
    if result.best_state is not None and result.best_epoch != len(result.history):  # else best is final
        label, state, other_masks = (("final", result.final_state, masks) if chosen == "best"
                                     else ("best", result.best_state, best_masks))
        filename = f"model_{label}.safetensors"
        ctx.save_weights(state, filename, masks=other_masks)
        files[filename] = label
        if other_masks is not None:
            ctx.save_masks(other_masks, masks_file_for(filename))
    ctx.record[CheckpointsRecord.SECTION] = CheckpointsRecord(files=files, best_epoch=result.best_epoch,
                                                              final_epoch=len(result.history)).to_json()
    return chosen


def kept_checkpoints(holder: StageRecord) -> list[Checkpoint]:
    """The weights a stage kept: model.safetensors first, then the other of best/final if it was kept."""
    rec = holder.section(CheckpointsRecord)
    if rec is None:
        return [Checkpoint("unknown", MODEL, None)]
    epochs = {"best": rec.best_epoch, "final": rec.final_epoch}
    selected = rec.files[MODEL]
    out = [Checkpoint(selected, MODEL, epochs[selected])]
    out += [Checkpoint(which, fname, epochs[which]) for fname, which in rec.files.items()
            if fname != MODEL and holder.has_file(fname)]
    return out
