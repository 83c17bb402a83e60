"""Shared fixtures: a tiny pipeline on the embedded digits dataset that runs in seconds."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(1)


def tiny_config(**stage_overrides) -> dict:
    """A pipeline of all issue-2 stages, small enough for tests (about ten seconds on one core)."""
    train = {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 6,
             "optimizer": {"lr": 0.05}, "schedule": {"kind": "constant"},
             "attack": {"steps": 3}, "eval": {"val_limit": 64, "test_limit": 64, "attack": {"steps": 3}}}
    stages = [
        {"name": "warmup", "type": "dense_warmup", "mode": "pgd", **train},
        {"name": "finetune", "type": "finetune", "mode": "pgd", **{**train, "epochs": 1}},
        {"name": "evaluate", "type": "evaluate", "attack": {"steps": 3},
         "train_limit": 64, "val_limit": 64, "test_limit": 64},
        {"name": "export", "type": "export", "parity_samples": 32},
        {"name": "runtime_check", "type": "runtime_check", "providers": ["cpu"], "batch_sizes": [1, 8],
         "runs": 100, "warmup": 2, "intra_op_threads": 1},
    ]
    for st in stages:
        st.update(stage_overrides.get(st["name"], {}))
    return {"run": {"name": "tiny", "seed": 3}, "data": {"dataset": "digits"}, "model": {"arch": "small_cnn"},
            "stages": stages}


@pytest.fixture
def write_config(tmp_path):
    def _write(cfg: dict, name: str = "cfg.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path
    return _write


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """The real command line, in a subprocess, as a user runs it."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


class Brightness(torch.nn.Module):
    """A two-class model with a known answer under attack: class 1 iff the mean pixel is above 0.5."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        m = (x.mean(dim=(1, 2, 3)) - 0.5) * self.scale
        return torch.stack([-m, m], dim=1)


# one-pixel-value images for Brightness; distances to the 0.5 boundary: .3 .02 .01 .02 .03 .3
BRIGHTNESS_MEANS = torch.tensor([0.2, 0.48, 0.49, 0.52, 0.53, 0.8])
