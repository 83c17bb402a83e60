"""The rewire stage through the real CLI: every method preset on a tiny run, outputs, FLOPs, resume after SIGKILL."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from pipeline.engine import store
from pipeline.engine.config import load_config
from pipeline.engine.errors import ConfigError
from pipeline.sparsity.dst import METHODS

from tests.conftest import REPO, run_cli

TRAIN = {"mode": "pgd", "epochs": 2, "batch_size": 64, "max_steps_per_epoch": 4, "optimizer": {"lr": 0.05},
         "schedule": {"kind": "constant"}, "attack": {"steps": 2},
         "eval": {"val_limit": 32, "test_limit": 32, "attack": {"steps": 2}}}
# Each method's own `example`: small intervals so that it rewires several times in 8 steps.
SPARSITY = {name: cls.example for name, cls in METHODS.items()}


def stage_cfg(name: str, method: str, **extra) -> dict:
    train = dict(TRAIN)
    if method == "flying_bird_plus":  # its signals are read on the whole val split (a validation rule)
        train["eval"] = {k: v for k, v in TRAIN["eval"].items() if k != "val_limit"}
    return {"name": name, "type": "rewire", "method": method, "density": 0.3, **train,
            "sparsity": SPARSITY[method], **extra}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def presets_run(tmp_path_factory):
    """One pipeline: a dense warmup, every method from scratch, and RigL from the warmup's weights."""
    tmp = tmp_path_factory.mktemp("rewire")
    stages = [{"name": "warmup", "type": "dense_warmup", **TRAIN, "epochs": 1}]
    stages += [stage_cfg(m, m) for m in METHODS]
    stages.append(stage_cfg("rigl_from_warmup", "rigl", input="warmup", select="best",
                            sparsity={"update_every": 2, "init_positions": "magnitude"}))
    cfg = {"run": {"name": "rewire", "seed": 5}, "data": {"dataset": "digits"}, "model": {"arch": "small_cnn"},
           "stages": stages}
    path = tmp / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    run_cli("run", str(path), "--run-dir", str(tmp / "run"), "-q", check=True)
    return tmp / "run"


def test_every_registered_method_ships_an_example():
    missing = [name for name, example in SPARSITY.items() if example is None]
    assert not missing, f"sparsity methods without an `example` (a tiny test run's overrides): {missing}"


@pytest.mark.parametrize("name", [*SPARSITY, "rigl_from_warmup"])
def test_preset_runs_and_writes_consistent_outputs(presets_run, name):
    d = presets_run / name
    rec = json.loads((d / "stage.json").read_text())
    sp = rec["sparsity"]
    masks = store.load_tensors(d / "masks.safetensors", rec["files"]["masks.safetensors"])
    weights = store.load_tensors(d / "model.safetensors", rec["files"]["model.safetensors"])
    total = sum(m.numel() for m in masks.values())
    assert {n: int(m.sum()) for n, m in masks.items()} == sp["counts"]
    assert sum(sp["counts"].values()) == round(0.3 * total)  # exact global density, every method
    assert sp["density"] == pytest.approx(0.3, abs=1 / total)
    for n, m in masks.items():
        assert torch.all(weights[n][~m] == 0), n
    updates = read_jsonl(d / "updates.jsonl")
    assert len(updates) == sp["events"] > 0 and [u["event_index"] for u in updates] == list(range(1, len(updates) + 1))
    assert sp["ever_active"] == pytest.approx(updates[-1]["ever_active"]) and sp["ever_active"] > 0.3
    history = read_jsonl(d / "history.jsonl")
    assert len(history) == 2
    assert all({"density", "connections_changed", "ever_active", "sparsity_events"} <= set(r) for r in history)
    assert sum(r["connections_changed"] for r in history) == sp["connections_changed"] == sum(u["changed"] for u in updates)
    assert rec["flops"]["inference"]["ratio"] < 1 and rec["flops"]["training"]["steps"] == 8
    if name == "flying_bird_plus":  # too few epochs for its signals here; the resume test sees it act
        assert all(u["prune_signal"] is None for u in updates) and "fbp_prune_signal" in history[-1]
    if name == "mest":
        assert {u["event"] for u in updates} == {"grow", "prune_back"}
        assert max(u["density"] for u in updates) > 0.3
    if name == "granet":
        assert updates[0]["event"] == "gradual_prune" and updates[0]["density"] < 0.8
    if name == "set":
        assert [u["step"] for u in updates] == [3, 7]
    if name == "rigl_from_warmup":  # select: best keeps the final weights too, zero outside the final masks
        assert rec["input"] == "warmup" and sp["selected"] == "best"
        ck = rec["checkpoints"]
        if ck["best_epoch"] == ck["final_epoch"]:  # the best epoch is the last: one file is both
            assert ck["files"] == {"model.safetensors": "best"}
        else:
            assert ck["files"] == {"model.safetensors": "best", "model_final.safetensors": "final"}
            final = store.load_tensors(d / "model_final.safetensors", rec["files"]["model_final.safetensors"])
            final_masks = store.load_tensors(d / "model_final.masks.safetensors",
                                             rec["files"]["model_final.masks.safetensors"])
            for n, density in sp["final_layers"].items():
                assert int(torch.count_nonzero(final[n])) <= round(density * final[n].numel()), n
                assert int(final[n][~final_masks[n]].count_nonzero()) == 0, n


def test_rigl_training_flops_charge_dense_gradients_at_growth_steps(presets_run):
    rec = json.loads((presets_run / "rigl" / "stage.json").read_text())
    fl, updates = rec["flops"], read_jsonl(presets_run / "rigl" / "updates.jsonl")
    assert [u["step"] for u in updates] == [1, 3, 5]
    f_sparse, f_dense = fl["inference"]["sparse_flops"], fl["inference"]["dense_flops"]
    k, images = fl["training"]["attack_steps"], fl["training"]["images"]
    # per-layer counts never change, so every step runs at the final density; 3 steps pay a dense weight gradient
    expected = images * (3 + 2 * k) * f_sparse + len(updates) * 64 * (f_dense - f_sparse)
    assert fl["training"]["corrected"] == pytest.approx(expected, rel=1e-9)
    assert fl["training"]["paper"] == pytest.approx(images * 3 * (k + 1) * f_sparse, rel=1e-9)


def test_sigkill_mid_stage_resumes_bit_identically(tmp_path):
    cfg = {"run": {"name": "resume", "seed": 2}, "data": {"dataset": "digits"}, "model": {"arch": "small_cnn"},
           "stages": [stage_cfg("fbp", "flying_bird_plus", epochs=3, progress_every_steps=3,
                                sparsity={**SPARSITY["flying_bird_plus"], "grow": "gradient"})]}
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_cli("run", str(path), "--run-dir", str(ref), "-q", check=True)
    killed = run_cli("run", str(path), "--run-dir", str(cut), "-q", env={"PIPELINE_FAULT_AFTER_STEPS": "10"})
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((cut / "fbp" / "progress" / "manifest.json").read_text())["step"] == 9  # mid-epoch 3
    resumed = run_cli("run", str(path), "--run-dir", str(cut), check=True)
    assert "resuming from saved progress" in resumed.stderr
    for f in ("model.safetensors", "masks.safetensors", "updates.jsonl"):
        assert (cut / "fbp" / f).read_bytes() == (ref / "fbp" / f).read_bytes(), f
    drop = ("train_seconds", "eval_seconds")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(read_jsonl(cut / "fbp" / "history.jsonl")) == strip(read_jsonl(ref / "fbp" / "history.jsonl"))
    assert any(u["adaptive"] and u["step"] > 9 for u in read_jsonl(ref / "fbp" / "updates.jsonl"))


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*flying_bird*.yaml"))
                         + sorted((REPO / "configs").glob("dst_*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_validate(config):
    cfg = load_config(config)
    rewires = [s for s in cfg.stages if s.type == "rewire"]
    assert rewires and all(s.sparsity is not None for s in rewires)
    if "flying_bird" in config.stem:
        s = rewires[0]
        assert (s.density, s.epochs, s.sparsity.init, s.sparsity.update_every, s.sparsity.second_update_every) == \
               (0.2, 200, "igq", 900, 1200)
    else:
        assert {s.method for s in rewires} == {"set", "rigl", "mest", "granet"}
        assert {s.density for s in rewires} == {0.5, 0.6, 0.7} and all(s.mode == "clean" for s in rewires)


def test_invalid_sparsity_is_reported_with_its_path(tmp_path):
    cfg = {"data": {"dataset": "digits"},
           "stages": [{"name": "rw", "type": "rewire", "method": "rigl", "sparsity": {"update_every": 0,
                                                                                   "gradual": {"end_fraction": 0.5}}}]}
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "stages[0].sparsity: gradual is read only by granet" in str(err.value)
    path.write_text(json.dumps({**cfg, "stages": [{"name": "rw", "type": "rewire", "method": "flying_bird_plus",
                                                   "sparsity": {"adaptve": {}, "adaptive": {"windw": 2}}}]}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "stages[0].sparsity.adaptive.windw: unknown key (did you mean 'window'?)" in str(err.value)
    assert "stages[0].sparsity.adaptve: unknown key (did you mean 'adaptive'?)" in str(err.value)
    path.write_text(json.dumps({**cfg, "stages": [{"name": "rw", "type": "rewire", "method": "rigl",
                                                   "sparsity": {"update_every": 0}}]}))
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2 and "stages[0].sparsity.update_every: must be > 0" in proc.stderr


@pytest.mark.parametrize("ev, named", [({"every": 2}, "eval.every: 2"), ({"val_limit": 64}, "eval.val_limit: 64"),
                                       ({"every": 3, "val_limit": 10}, "eval.every: 3 and eval.val_limit: 10")])
def test_flying_bird_plus_refuses_a_sparse_or_partial_validation_signal(tmp_path, ev, named):
    cfg = {"run": {"name": "fbp"}, "data": {"dataset": "digits"}, "model": {"arch": "small_cnn"},
           "stages": [{"name": "rw", "type": "rewire", "method": "flying_bird_plus", "eval": ev}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (f"stages[0].method: 'flying_bird_plus' reads its signals every epoch on the full validation split "
            f"(as the reference), which contradicts {named}; set eval.every: 1") in str(err.value)
    # Flying Bird (no signals) may evaluate as sparsely as it likes
    cfg["stages"][0]["method"] = "flying_bird"
    path.write_text(json.dumps(cfg))
    fb = load_config(path).stage("rw").eval
    assert (fb.every, fb.val_limit) == (ev.get("every", 1), ev.get("val_limit"))
