"""The run-directory read model on hand-written folders: statuses without a valid config, verified
files, history_select, model holder and lineage, typed sections, and surviving artifacts."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from pipeline.engine import store
from pipeline.engine.errors import CheckpointError, PipelineError
from pipeline.engine.rundir import RunDir, StageRecord, masks_file_for
from pipeline.metrics.flops import FlopsRecord


def _stage(run, name, stype, **record):
    sdir = run / name
    sdir.mkdir(parents=True)
    files = {fname: store.atomic_write_bytes(sdir / fname, data) for fname, data in record.pop("files", {}).items()}
    store.atomic_write_json(sdir / "stage.json", {"name": name, "type": stype, "status": "done", **record,
                                                  "files": files})


def hand_run(tmp_path):
    run = tmp_path / "run"
    stages = [{"name": n, "type": t, "input": i} for n, t, i in (
        ("warm", "dense_warmup", None), ("imp", "imp", "warm"), ("ev", "evaluate", "imp"), ("broken", "rewire", "warm"),
        ("cut", "rewire", "warm"), ("bad", "rewire", "warm"), ("later", "rewire", "warm"))]
    run.mkdir()
    # a stage type this install lacks: the config does not validate, so the statuses are the plain on-disk view
    (run / "config.yaml").write_text(yaml.safe_dump({"run": {"name": "r"}, "stages": stages + [
        {"name": "plug", "type": "not_installed", "input": "warm"}]}))
    rows = [{"round": 1, "epoch": 1, "test_ra": 1.0}, {"round": 2, "epoch": 1, "test_ra": 2.0}]
    _stage(run, "warm", "dense_warmup", model={"arch": "x"}, flops={"training": {
        "paper": 3.0, "corrected": 2.0, "images": 1, "steps": 1, "mode": "clean", "attack_steps": 0}},
        files={"history.jsonl": b'{"epoch": 1}\n'})
    _stage(run, "imp", "imp", input="warm", model={"arch": "x"}, history_select={"round": 2},
           files={"history.jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode()})
    _stage(run, "ev", "evaluate", input="imp", model={"arch": "x"}, model_from="imp")
    (run / "broken").mkdir()
    store.atomic_write_json(run / "broken" / "failed.json", {"error": "RuntimeError: boom"})
    (run / "cut" / "progress").mkdir(parents=True)
    store.atomic_write_json(run / "cut" / "progress" / "manifest.json", {"epoch": 3, "step": 12})
    (run / "bad").mkdir()
    (run / "bad" / "stage.json").write_text("{not json")
    return run


def test_statuses_files_history_holder_and_lineage(tmp_path):
    run = RunDir(hand_run(tmp_path))
    assert [(s.name, s.status) for s in run.stages] == [
        ("warm", "done"), ("imp", "done"), ("ev", "done"), ("broken", "failed"), ("cut", "partial"),
        ("bad", "damaged"), ("later", "pending"), ("plug", "pending")]
    assert run.stage("broken").detail == "RuntimeError: boom" and "epoch 3 (done), step 12" in run.stage("cut").detail
    assert "is damaged" in run.stage("bad").detail and "--repair" in run.stage("bad").detail
    imp, ev = run.stage("imp"), run.stage("ev")
    assert [r["round"] for r in imp.history()] == [2] and len(imp.history(all_rows=True)) == 2
    assert run.model_holder(ev) is imp and run.final_model_stage() is imp
    assert [s.name for s in run.lineage(ev)] == ["warm", "imp", "ev"]
    assert [s.name for s in run.training_stages(ev)] == ["warm"]
    assert run.stage("warm").section(FlopsRecord).training.corrected == 2.0
    assert imp.section(FlopsRecord) is None
    (run.dir / "imp" / "history.jsonl").write_text('{"round": 2}\n')  # no longer what stage.json recorded
    with pytest.raises(CheckpointError, match="history.jsonl"):
        StageRecord(run.dir, "imp").history()
    with pytest.raises(CheckpointError, match="did not write model.safetensors"):
        imp.file("model.safetensors")
    with pytest.raises(CheckpointError, match="'later' has not finished"):
        StageRecord.finished_stage(run.dir, "later")
    with pytest.raises(PipelineError, match="not a run directory"):
        RunDir(tmp_path)
    assert masks_file_for("model.safetensors") == "masks.safetensors"
    assert masks_file_for("round_02.safetensors") == "round_02.masks.safetensors"


def test_a_typed_section_names_the_file_and_key(tmp_path):
    run = hand_run(tmp_path)
    record = json.loads((run / "warm" / "stage.json").read_text())
    record["flops"]["training"]["flops"] = 1
    (run / "warm" / "stage.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"warm/stage.json: flops.training: unknown key\(s\) flops"):
        StageRecord(run, "warm").section(FlopsRecord)
    del record["flops"]["training"]["flops"], record["flops"]["training"]["mode"]
    (run / "warm" / "stage.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="missing key\\(s\\) mode"):
        StageRecord(run, "warm").section(FlopsRecord)


def test_surviving_artifacts_outlive_a_resume_and_land_in_the_stage_folder(tmp_path, write_config):
    from pipeline.engine.config import load_config
    from pipeline.engine.context import StageContext
    from pipeline.engine.console import Console

    from tests.engine.test_runner import train_only

    cfg = load_config(write_config(train_only()))

    def ctx():
        return StageContext(pipeline_config=cfg, stage_cfg=cfg.stages[0], run_dir=tmp_path / "run", device="cpu",
                            console=Console(quiet=True), fingerprint="fp", data_cache={})

    first = ctx()
    sha = first.save_surviving("ticket.safetensors", {"w": torch.ones(2)}, masks={"w": torch.tensor([True, False])})
    first.save_progress({"epoch": 1, "step": 1})
    again = ctx()  # a new process after a kill
    assert again.load_progress() == {"epoch": 1, "step": 1}
    assert torch.equal(again.surviving_tensors("ticket.safetensors")["w"], torch.tensor([1.0, 0.0]))
    again.publish_surviving()
    assert again.files["ticket.safetensors"] == sha == store.sha256_file(tmp_path / "run" / "warmup" / "ticket.safetensors")
    with pytest.raises(CheckpointError, match="saved no artifact nope"):
        again.surviving_tensors("nope")
