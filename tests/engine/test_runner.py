"""The engine end to end on tiny runs: skipping, resume after SIGKILL, --from, staleness, locks, plugins."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from pipeline.engine import store
from pipeline.engine.config import load_config
from pipeline.engine.errors import LockError
from pipeline.engine.lock import RunLock, lock_state
from pipeline.engine.registry import STAGES
from pipeline.engine.runner import Runner

from tests.conftest import run_cli, tiny_config


def stage_record(run_dir, name):
    return json.loads((run_dir / name / "stage.json").read_text())


def train_only(**over):
    cfg = tiny_config(**over)
    cfg["stages"] = cfg["stages"][:2]
    return cfg


def test_rerun_skips_done_stages(write_config, tmp_path):
    path = write_config(train_only())
    run_dir = tmp_path / "run"
    first = run_cli("run", str(path), "--run-dir", str(run_dir), "-q", check=True)
    rec = stage_record(run_dir, "warmup")
    assert rec["status"] == "done" and set(rec["files"]) >= {"model.safetensors", "history.jsonl"}
    for fname, sha in rec["files"].items():
        assert store.sha256_file(run_dir / "warmup" / fname) == sha
    assert len((run_dir / "warmup" / "history.jsonl").read_text().splitlines()) == 2
    assert not (run_dir / "warmup" / "progress").exists()
    assert (run_dir / "config.yaml").exists()
    second = run_cli("run", str(path), "--run-dir", str(run_dir), check=True)
    assert "[warmup] done, skipped" in second.stderr and "[finetune] done, skipped" in second.stderr
    assert stage_record(run_dir, "warmup")["timings"] == rec["timings"]
    del first


def test_sigkill_mid_stage_then_resume_is_bit_identical(write_config, tmp_path):
    cfg = train_only(warmup={"epochs": 3, "progress_every_steps": 4})
    path = write_config(cfg)
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    run_cli("run", str(path), "--run-dir", str(ref_dir), "-q", check=True)

    # Killed after step 10 of the warmup (epoch 2, mid-epoch; last progress save was at step 8).
    killed = run_cli("run", str(path), "--run-dir", str(cut_dir), "-q", env={"PIPELINE_FAULT_AFTER_STEPS": "10"})
    assert killed.returncode == -signal.SIGKILL
    manifest = json.loads((cut_dir / "warmup" / "progress" / "manifest.json").read_text())
    assert manifest["step"] == 8
    status = run_cli("status", str(cut_dir), "--json", check=True)
    states = {s["name"]: s["state"] for s in json.loads(status.stdout)["stages"]}
    assert states == {"warmup": "partial", "finetune": "pending"}

    resumed = run_cli("run", str(path), "--run-dir", str(cut_dir), check=True)
    assert "stale lock" in resumed.stderr  # the killed process left its lock behind
    assert "resuming from saved progress" in resumed.stderr
    for stage in ("warmup", "finetune"):
        assert (cut_dir / stage / "model.safetensors").read_bytes() == (ref_dir / stage / "model.safetensors").read_bytes()
    ref_hist = [json.loads(l) for l in (ref_dir / "warmup" / "history.jsonl").read_text().splitlines()]
    cut_hist = [json.loads(l) for l in (cut_dir / "warmup" / "history.jsonl").read_text().splitlines()]
    drop = ("train_seconds", "eval_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ref_hist] == \
           [{k: v for k, v in r.items() if k not in drop} for r in cut_hist]


def test_from_and_staleness(write_config, tmp_path):
    path = write_config(train_only())
    run_dir = tmp_path / "run"
    run_cli("run", str(path), "--run-dir", str(run_dir), "-q", check=True)
    warm_time = stage_record(run_dir, "warmup")["timings"]["finished"]

    # editing finetune's config makes it stale, not the warmup
    cfg = train_only(finetune={"optimizer": {"lr": 0.02}})
    path.write_text(yaml.safe_dump(cfg))
    states = {s.name: s.state for s in Runner(load_config(path), run_dir).statuses()}
    assert states == {"warmup": "done", "finetune": "stale"}
    # editing the warmup marks it and everything downstream stale; status shows it
    cfg = train_only(warmup={"epochs": 3})
    path.write_text(yaml.safe_dump(cfg))
    out = run_cli("status", str(run_dir), "--json", check=True).stdout
    assert {s["name"]: s["state"] for s in json.loads(out)["stages"]} == {"warmup": "stale", "finetune": "stale"}
    assert "stale" in run_cli("status", str(run_dir), check=True).stdout

    path.write_text(yaml.safe_dump(train_only()))
    proc = run_cli("run", str(path), "--run-dir", str(run_dir), "--from", "finetune", check=True)
    assert "[warmup] done, skipped" in proc.stderr and "[finetune] running finetune (--from)" in proc.stderr
    assert stage_record(run_dir, "warmup")["timings"]["finished"] == warm_time

    proc = run_cli("run", str(path), "--run-dir", str(run_dir), "--from", "nope")
    assert proc.returncode == 2 and "no such stage" in proc.stderr


def test_until_stops_after_named_stage(write_config, tmp_path):
    path = write_config(train_only())
    run_dir = tmp_path / "run"
    run_cli("run", str(path), "--run-dir", str(run_dir), "--until", "warmup", "-q", check=True)
    assert (run_dir / "warmup" / "stage.json").exists()
    assert not (run_dir / "finetune" / "stage.json").exists()


def test_lock_blocks_a_second_writer(tmp_path):
    with RunLock(tmp_path):
        assert lock_state(tmp_path) == "held"
        with pytest.raises(LockError, match=f"in use by process {os.getpid()}"):
            with RunLock(tmp_path):
                pass
    assert lock_state(tmp_path) == "free"
    seen = []
    with RunLock(tmp_path, on_stale=seen.append):  # a clean release leaves nothing stale behind
        pass
    assert seen == []


def test_stale_lock_is_detected_and_reported(tmp_path):
    # a process that takes the lock and is SIGKILLed while holding it
    code = ("import os, signal, sys; from pipeline.engine.lock import RunLock, lock_state; "
            "RunLock(sys.argv[1]).__enter__(); os.kill(os.getpid(), signal.SIGKILL)")
    dead = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    dead.wait()
    assert lock_state(tmp_path) == "stale"
    seen = []
    with RunLock(tmp_path, on_stale=seen.append):
        pass
    assert seen and seen[0]["pid"] == dead.pid


def test_tampered_checkpoint_is_refused_downstream(write_config, tmp_path):
    path = write_config(train_only())
    run_dir = tmp_path / "run"
    run_cli("run", str(path), "--run-dir", str(run_dir), "--until", "warmup", "-q", check=True)
    model = run_dir / "warmup" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-16])  # truncated
    proc = run_cli("run", str(path), "--run-dir", str(run_dir), "-q")
    assert proc.returncode == 4  # verified when the skip is considered, before finetune loads it
    assert "warmup/model.safetensors" in proc.stderr and "--repair" in proc.stderr and "Traceback" not in proc.stderr
    assert (run_dir / "warmup" / "stage.json").exists()  # the finished stage's record survives


def test_stage_plugin_from_outside_the_core(tmp_path, write_config, monkeypatch):
    # A separate "installed" distribution declaring a stage in the entry-point group.
    pkg = tmp_path / "site"
    (pkg / "shout_stage").mkdir(parents=True)
    (pkg / "shout_stage" / "__init__.py").write_text(textwrap.dedent('''
        from pipeline.engine.stage import Stage, StageConfig

        class ShoutConfig(StageConfig):
            word: str = "hello"

        class Shout(Stage):
            Config = ShoutConfig
            summary = "writes a word"

            def run(self, ctx):
                model, masks, card = ctx.load_input_model()
                ctx.write_json("shout.json", {"word": ctx.config.word.upper(), "arch": card["arch"]})
                ctx.metrics["length"] = len(ctx.config.word)
    '''))
    dist = pkg / "shout_stage-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-stage\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pipeline.stages]\nshout = shout_stage:Shout\n")
    monkeypatch.syspath_prepend(str(pkg))
    STAGES.reload()
    try:
        assert "shout" in STAGES.names()
        cfg = train_only()
        cfg["stages"] = cfg["stages"][:1] + [{"name": "loud", "type": "shout", "word": "sparse"}]
        cfg["stages"][0]["epochs"] = 1
        runner = Runner(load_config(write_config(cfg)), tmp_path / "run", quiet=True)
        runner.run()
        out = json.loads((tmp_path / "run" / "loud" / "shout.json").read_text())
        assert out == {"word": "SPARSE", "arch": "small_cnn"}
        assert stage_record(tmp_path / "run", "loud")["metrics"]["length"] == 6
    finally:
        STAGES.reload()


def test_status_applies_the_runs_set_overrides(write_config, tmp_path):
    path = write_config(train_only())
    run_dir = tmp_path / "run"
    run_cli("run", str(path), "--run-dir", str(run_dir), "-q", "--until", "warmup",
            "--set", "stages.warmup.epochs=1", check=True)
    out = json.loads(run_cli("status", str(run_dir), "--json", check=True).stdout)
    assert {s["name"]: s["state"] for s in out["stages"]} == {"warmup": "done", "finetune": "pending"}


def test_progress_survives_a_kill_between_its_writes(write_config, tmp_path):
    from pipeline.engine.context import StageContext

    cfg = load_config(write_config(train_only()))
    run_dir = tmp_path / "run"

    def ctx():
        return StageContext(pipeline_config=cfg, stage_cfg=cfg.stages[0], run_dir=run_dir, device="cpu",
                            console=Runner(cfg, run_dir, quiet=True).console, fingerprint="fp", data_cache={})

    first = ctx()
    first.save_progress({"epoch": 1, "step": 6, "w": torch.ones(3)})
    first.save_progress({"epoch": 2, "step": 12, "w": torch.full((3,), 2.0)})
    files = sorted(p.name for p in first.progress_dir.iterdir())
    assert files == ["manifest.json", "state-000002.pt"]  # the older state goes once the manifest names the new
    # a kill after the next state file was written but before the manifest named it
    (first.progress_dir / "state-000003.pt").write_bytes(b"half a file")
    state = ctx().load_progress()
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.full((3,), 2.0))


def test_early_bird_stop_on_an_unevaluated_epoch_is_evaluated(write_config, tmp_path):
    cfg = train_only()
    cfg["stages"] = [cfg["stages"][0], {**cfg["stages"][0], "name": "eb", "type": "early_bird", "input": "warmup",
                                        "epochs": 6, "window": 2, "threshold": 1.0, "density": 0.5,
                                        "eval": {**cfg["stages"][0]["eval"], "every": 5}}]
    cfg["stages"][0]["epochs"] = 1
    run_dir = tmp_path / "run"
    run_cli("run", str(write_config(cfg)), "--run-dir", str(run_dir), "-q", check=True)
    rows = [json.loads(line) for line in (run_dir / "eb" / "history.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and "val_ra" in rows[-1]  # stopped at epoch 2 (window 2), judged although every=5
    assert stage_record(run_dir, "eb")["metrics"]["RA_final"] == rows[-1]["test_ra"]
