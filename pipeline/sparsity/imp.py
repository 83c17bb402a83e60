"""Iterative magnitude pruning's state between rounds, as one value (`ImpProgress`) with
state_dict() / load_state_dict(), so a stage killed between rounds resumes at the next round.

A round's ticket files are written as the stage's surviving artifacts (StageContext.save_surviving),
so they outlive a resume and appear in the stage folder when the stage finishes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pipeline.sparsity.masks import MaskSet


@dataclass
class ImpProgress:
    round: int  # the round to train next (0: a dense round 0 first)
    mask: MaskSet | None  # that round's mask; None = dense
    rewind_file: str  # the rewind point's weights, in the stage's progress folder
    rewind_sha: str
    rewind_fixed: bool  # False until the first training run reached the rewind epoch
    rounds: list[dict] = field(default_factory=list)  # stage.json `imp.rounds`, one record per trained round

    @property
    def steps(self) -> int:
        return sum(r["steps"] for r in self.rounds)

    def finish_round(self, record: dict, next_mask: MaskSet | None) -> None:
        self.rounds.append(record)
        self.round += 1
        self.mask = next_mask

    def state_dict(self) -> dict:
        """Plain CPU tensors and values; `epoch`/`step` are what `pipeline status` shows."""
        mask = {} if self.mask is None else MaskSet(self.mask.state_dict()).to("cpu").state_dict()
        return {"round": self.round, "mask": mask, "rounds": list(self.rounds), "rewind_file": self.rewind_file,
                "rewind_sha": self.rewind_sha, "rewind_fixed": self.rewind_fixed,
                "epoch": f"round {self.round}", "step": self.steps}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        """Continue from a saved state_dict(); the mask goes to `device`."""
        self.round, self.rounds = state["round"], list(state["rounds"])
        self.mask = MaskSet(state["mask"]).to(device) if state["mask"] else None
        self.rewind_file, self.rewind_sha, self.rewind_fixed = (state["rewind_file"], state["rewind_sha"],
                                                                state["rewind_fixed"])

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> ImpProgress:
        progress = cls(round=0, mask=None, rewind_file="", rewind_sha="", rewind_fixed=False)
        progress.load_state_dict(state, device)
        return progress
