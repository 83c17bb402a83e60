"""IMP's state between rounds is one value whose state_dict() survives a save/load unchanged."""
from __future__ import annotations

import torch

from pipeline.engine import store
from pipeline.sparsity.imp import ImpProgress
from pipeline.sparsity.masks import MaskSet


def test_imp_progress_round_trips_through_a_weights_only_state_file(tmp_path):
    mask = MaskSet({"conv.weight": torch.tensor([[True, False], [False, True]])})
    progress = ImpProgress(round=1, mask=mask, rewind_file="rewind_input.safetensors", rewind_sha="ab",
                           rewind_fixed=True)
    progress.finish_round({"round": 1, "steps": 6}, MaskSet({"conv.weight": torch.tensor([[True, False], [False, False]])}))
    progress.finish_round({"round": 2, "steps": 4}, None)
    sha = store.save_state(tmp_path / "state.pt", progress.state_dict())
    loaded = ImpProgress.from_state_dict(store.load_state(tmp_path / "state.pt", sha))
    assert loaded == progress and loaded.mask is None and loaded.steps == 10
    assert progress.state_dict()["epoch"] == "round 3"  # what `pipeline status` shows
    progress.mask = mask
    assert ImpProgress.from_state_dict(progress.state_dict()).mask == mask
