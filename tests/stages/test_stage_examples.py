"""Every registered stage type runs its own example (stages/examples/<type>.yaml) through the real CLI.

Registering a stage type enrols it here: a type without an example fails `test_every_stage_type_ships_an_example`.
All examples run in ONE pipeline on the embedded digits data (after a one-epoch dense warmup that the
examples needing an input model read), then each stage is checked for the invariants every stage keeps:
it finished, every file it wrote matches the sha256 in its stage.json, masked weights are exactly zero,
and running the same config again skips it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.engine import store
from pipeline.engine.config import load_config
from pipeline.engine.registry import STAGES

from tests.conftest import REPO, run_cli

EXAMPLES = REPO / "stages" / "examples"
WARMUP = {"name": "warmup", "type": "dense_warmup", "mode": "clean", "epochs": 1, "batch_size": 32,
          "max_steps_per_epoch": 2, "eval": {"val_limit": 32, "test_limit": 32, "robust": False}}


def examples() -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))}


def pipeline_of(found: dict[str, dict]) -> dict:
    """Warmup first, then each example (named by its type) after the example it reads."""
    stages, placed, pending = [WARMUP], {"warmup"}, dict(found)
    while pending:
        ready = [t for t, ex in pending.items() if ex.get("input") in (None, *placed)]
        if not ready:
            raise AssertionError(f"examples read stages that no example provides: "
                                 f"{ {t: ex.get('input') for t, ex in pending.items()} }")
        for t in ready:
            stages.append({"name": t, **pending.pop(t)})
            placed.add(t)
    return {"run": {"name": "examples", "seed": 4}, "data": {"dataset": "digits"}, "model": {"arch": "small_cnn"},
            "stages": stages}


def test_every_stage_type_ships_an_example():
    found = examples()
    missing = sorted(set(STAGES.names()) - set(found))
    assert not missing, f"stage types without stages/examples/<type>.yaml: {missing}"
    stale = sorted(set(found) - set(STAGES.names()))
    assert not stale, f"examples for unregistered stage types: {stale}"
    for stage_type, ex in found.items():
        assert ex.get("type") == stage_type, f"stages/examples/{stage_type}.yaml has type {ex.get('type')!r}"
        assert "name" not in ex, f"stages/examples/{stage_type}.yaml: the test names each stage by its type"


@pytest.fixture(scope="module")
def examples_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("examples")
    path = tmp / "examples.yaml"
    path.write_text(yaml.safe_dump(pipeline_of(examples()), sort_keys=False))
    load_config(path)  # every example validates (a ConfigError names the stage and key)
    run_cli("run", str(path), "--run-dir", str(tmp / "run"), "-q", check=True)
    again = run_cli("run", str(path), "--run-dir", str(tmp / "run"), check=True)
    return tmp / "run", again.stderr


@pytest.mark.parametrize("stage_type", STAGES.names())
def test_example_runs_and_keeps_the_stage_invariants(examples_run, stage_type):
    run, rerun_log = examples_run
    d = run / stage_type
    record = json.loads((d / "stage.json").read_text())
    assert record["type"] == stage_type and record["name"] == stage_type
    files = record["files"]
    assert files, f"{stage_type} wrote no files"
    for name, sha in files.items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == sha, name
    for masks_name in [n for n in files if n.endswith("masks.safetensors")]:
        weights_name = masks_name.replace(".masks.safetensors", ".safetensors").replace("masks.safetensors",
                                                                                        "model.safetensors")
        masks = store.load_tensors(d / masks_name, files[masks_name])
        weights = store.load_tensors(d / weights_name, files[weights_name])
        assert masks and any(not bool(m.all()) for m in masks.values()), f"{masks_name} masks nothing"
        for n, m in masks.items():
            assert m.dtype == torch.bool and int(weights[n][~m].count_nonzero()) == 0, (masks_name, n)
    assert f"[{stage_type}] done, skipped" in rerun_log
