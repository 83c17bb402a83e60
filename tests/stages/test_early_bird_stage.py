"""early_bird stage (Robust Bird) through the real CLI on tiny digits runs: the stop rule, the ticket,
the finetune that keeps it, no-emergence handling, rewinding, and resume after SIGKILL."""
from __future__ import annotations

import json
import signal

import torch
from safetensors.torch import load_file

from pipeline.engine.config import validate_tree
from pipeline.engine.errors import ConfigError
from pipeline.metrics.flops import count_macs, inference_flops
from pipeline.models.card import build_model
from pipeline.sparsity import global_magnitude_masks

from tests.conftest import run_cli, tiny_config

TRAIN = {"batch_size": 64, "max_steps_per_epoch": 6, "optimizer": {"lr": 0.05}, "schedule": {"kind": "constant"},
         "eval": {"val_limit": 32, "test_limit": 32, "robust": False}}


def early_bird(**over) -> dict:
    return {"name": "early_bird", "type": "early_bird", "mode": "clean", **TRAIN, "epochs": 6,
            "density": 0.5, "window": 3, "threshold": 0.1, **over}


def pipeline_of(*stages) -> dict:
    cfg = tiny_config()
    cfg["stages"] = list(stages)
    return cfg


def record(run_dir, name) -> dict:
    return json.loads((run_dir / name / "stage.json").read_text())


def conv_linear(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(".weight") and v.ndim in (2, 4)}


def test_ticket_emerges_is_exact_and_finetune_keeps_it(write_config, tmp_path):
    base = tiny_config()
    warmup = {**base["stages"][0], "epochs": 1}
    finetune = {**base["stages"][1], "input": "early_bird"}
    run_dir = tmp_path / "run"
    # the lr drops after epoch 3 and the masks settle, as the paper's ticket emerges after the first drop
    search = early_bird(input="warmup", threshold=0.01, schedule={"kind": "multistep", "milestones": [3]})
    run_cli("run", str(write_config(pipeline_of(warmup, search, finetune))), "--run-dir", str(run_dir), "-q", check=True)

    rec = record(run_dir, "early_bird")
    eb = rec["early_bird"]
    assert eb["emerged"] and eb["epoch"] == eb["epochs_run"] == rec["metrics"]["emergence_epoch"]
    # the stop rule: the first epoch whose full window is within the threshold, and no earlier one
    full = [c for c in eb["curve"] if c["window"]]
    assert len(eb["curve"]) == eb["epoch"] and len(full) >= 2 and len(full[-1]["window"]) == 2
    assert max(full[-1]["window"]) <= 0.01 and all(max(c["window"]) > 0.01 for c in full[:-1])
    assert 0 < full[-1]["window"][0]  # the masks did move
    rows = [json.loads(line) for line in (run_dir / "early_bird" / "history.jsonl").read_text().splitlines()]
    assert [r["eb_distances"] for r in rows] == [c["window"] for c in eb["curve"]]

    # the ticket: exactly half of all conv + linear weights, by one global |w| threshold
    masks = load_file(run_dir / "early_bird" / "masks.safetensors")
    weights = load_file(run_dir / "early_bird" / "model.safetensors")
    assert set(masks) == set(conv_linear(weights))
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.5 * total) == rec["sparsity"]["kept"]
    assert global_magnitude_masks(conv_linear(weights), 0.5) == masks

    # inference FLOPs at the ticket's per-layer densities; training FLOPs = the clean dense search
    model = build_model(rec["model"])
    layer = inference_flops(count_macs(model, (1, 8, 8)), {n: int(m.sum()) / m.numel() for n, m in masks.items()})
    assert rec["flops"]["inference"]["sparse_flops"] == layer["sparse_flops"] < layer["dense_flops"]
    assert rec["flops"]["training"]["mode"] == "clean"

    # PGD-AT downstream keeps the mask: exact zeros exactly where it is False
    tuned = load_file(run_dir / "finetune" / "model.safetensors")
    assert load_file(run_dir / "finetune" / "masks.safetensors").keys() == masks.keys()
    for name, mask in masks.items():
        assert torch.equal(tuned[name] != 0, mask)


def test_no_emergence_fails_or_uses_the_last_epoch(write_config, tmp_path):
    # two epochs never fill a window of three masks
    failing = pipeline_of(early_bird(epochs=2, on_no_emergence="fail"))
    proc = run_cli("run", str(write_config(failing, "fail.yaml")), "--run-dir", str(tmp_path / "fail"), "-q")
    assert proc.returncode == 5 and "no early-bird ticket in 2 epochs" in proc.stderr
    assert not (tmp_path / "fail" / "early_bird" / "stage.json").exists()

    run_dir = tmp_path / "last"
    lenient = pipeline_of(early_bird(epochs=2, rewind_to="init", density=0.3))
    proc = run_cli("run", str(write_config(lenient, "last.yaml")), "--run-dir", str(run_dir), check=True)
    assert "warning: [early_bird] no early-bird ticket in 2 epochs" in proc.stderr
    rec = record(run_dir, "early_bird")
    assert not rec["early_bird"]["emerged"] and rec["early_bird"]["epochs_run"] == 2
    # rewind_to init: the seeded initial weights under the mask cut from the last epoch
    masks = load_file(run_dir / "early_bird" / "masks.safetensors")
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.3 * total)
    torch.manual_seed(3)
    init = build_model(rec["model"]).state_dict()
    saved = load_file(run_dir / "early_bird" / "model.safetensors")
    for name, value in init.items():
        expected = value * masks[name] if name in masks else value
        assert torch.equal(saved[name], expected), name


def test_sigkill_mid_search_then_resume_is_bit_identical(write_config, tmp_path):
    cfg = pipeline_of(early_bird(epochs=5, threshold=1.0, rewind_to="epoch_1", progress_every_steps=4))
    path = write_config(cfg)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_cli("run", str(path), "--run-dir", str(ref), "-q", check=True)
    # killed at step 10 (mid epoch 2): the detector's first mask and the epoch-1 snapshot come from progress
    killed = run_cli("run", str(path), "--run-dir", str(cut), "-q", env={"PIPELINE_FAULT_AFTER_STEPS": "10"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli("run", str(path), "--run-dir", str(cut), check=True)
    assert "resuming from saved progress" in resumed.stderr
    for name in ("model.safetensors", "masks.safetensors"):
        assert (cut / "early_bird" / name).read_bytes() == (ref / "early_bird" / name).read_bytes()
    assert record(cut, "early_bird")["early_bird"]["curve"] == record(ref, "early_bird")["early_bird"]["curve"]
    assert record(ref, "early_bird")["early_bird"]["epoch"] == 3  # threshold 1: fires once the window is full


def test_config_errors_name_their_path():
    cfg = pipeline_of(early_bird(rewind_to="epoch_9"),
                      early_bird(name="eb1", criterion={"pruner": "global_magnitude", "config_list": []}),
                      early_bird(name="eb2", criterion={"pruner": "slim"}, window=1))
    try:
        validate_tree(cfg)
    except ConfigError as exc:
        text = "\n".join(exc.problems)
    else:
        raise AssertionError("invalid config accepted")
    assert "stages[0].rewind_to: epoch_9 is after the last epoch (6)" in text
    assert "stages[1].criterion.config_list: only used with the nni pruners" in text
    assert "stages[2].criterion.pruner: 'slim' is not supported here" in text
    assert "stages[2].window: must be >= 2" in text


def test_taylor_criterion_cuts_the_ticket_through_the_stage(write_config, tmp_path):
    cfg = pipeline_of(early_bird(epochs=2, window=2, threshold=1.0, density=0.3,
                                 criterion={"pruner": "taylor", "taylor_batches": 2}))
    run_dir = tmp_path / "run"
    run_cli("run", str(write_config(cfg)), "--run-dir", str(run_dir), "-q", check=True)
    masks = load_file(run_dir / "early_bird" / "masks.safetensors")
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(0.3 * sum(m.numel() for m in masks.values()))
    assert record(run_dir, "early_bird")["config"]["criterion"]["pruner"] == "taylor"
