"""The fault-injection sweep (issue 12), kept as tests: bad configs, bad data, tampered run directories,
kills inside evaluate and export, non-finite training, bad deployment inputs.

Fast by design: most cases call `pipeline.engine.cli.main` in-process (the same code path as the
command, minus the interpreter start-up) or `pipeline validate`; the tampering cases copy one tiny
finished run made once for the module.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import zlib

import numpy as np
import pytest
import torch
import yaml

from pipeline.engine import integrity
from pipeline.engine.cli import main
from pipeline.engine.config import load_config
from pipeline.engine.errors import CheckpointError, StageCrashed
from pipeline.engine.runner import Runner

from tests.conftest import run_cli, tiny_config


def small_config() -> dict:
    cfg = tiny_config()
    for st in cfg["stages"][:2]:
        st.update({"epochs": 1, "max_steps_per_epoch": 2, "eval": {"val_limit": 32, "test_limit": 32,
                                                                    "attack": {"steps": 2}}})
    cfg["stages"][2].update({"train_limit": 32, "val_limit": 32, "test_limit": 32, "attack": {"steps": 2}})
    cfg["stages"][3]["parity_samples"] = 16
    cfg["stages"][4].update({"warmup": 1, "batch_sizes": [1]})
    return cfg


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(config path, run dir) of one finished tiny run: warmup, finetune, evaluate, export, runtime_check."""
    root = tmp_path_factory.mktemp("faults")
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(small_config(), sort_keys=False))
    run_dir = root / "run"
    run_cli("run", str(path), "--run-dir", str(run_dir), "-q", check=True)
    return path, run_dir


@pytest.fixture
def copy_run(finished, tmp_path):
    def _copy():
        dst = tmp_path / "run"
        shutil.copytree(finished[1], dst, symlinks=True)  # copy2: mtimes kept, as `cp -a` would
        (dst / ".lock").unlink(missing_ok=True)
        return dst
    return _copy


def statuses(cfg_path, run_dir, deep=False) -> dict[str, tuple[str, str]]:
    runner = Runner(load_config(cfg_path), run_dir, quiet=True)
    return {s.name: (s.state, s.detail) for s in runner.statuses(deep=deep)}


def flip_byte(path, offset=-40):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# --- 1. a skipped stage is verified ---------------------------------------------------------------

TAMPER = {
    "flipped byte in finetune/model.safetensors": ("finetune", lambda d: flip_byte(d / "finetune" / "model.safetensors"), "finetune/model.safetensors"),
    "flipped byte in export/model.onnx": ("export", lambda d: flip_byte(d / "export" / "model.onnx"), "export/model.onnx"),
    "truncated warmup/history.jsonl": ("warmup", lambda d: (d / "warmup" / "history.jsonl").write_text("{}\n"), "history.jsonl"),
    "deleted export/model.onnx": ("export", lambda d: (d / "export" / "model.onnx").unlink(), "is missing"),
    "edited metric in evaluate/stage.json": ("evaluate", lambda d: _edit_metric(d / "evaluate" / "stage.json"), "altered"),
    "deleted finetune/stage.json": ("finetune", lambda d: (d / "finetune" / "stage.json").unlink(), "is missing"),
    "emptied evaluate folder": ("evaluate", lambda d: [p.unlink() for p in (d / "evaluate").iterdir()], "is missing"),
    "garbage export/stage.json": ("export", lambda d: (d / "export" / "stage.json").write_bytes(b"\x00garbage"), "altered"),
}


def _edit_metric(path):
    rec = json.loads(path.read_text())
    key = next(k for k, v in rec["metrics"].items() if isinstance(v, (int, float)))
    rec["metrics"][key] = 99.9
    path.write_text(json.dumps(rec, indent=2))


@pytest.mark.parametrize("case", list(TAMPER))
def test_tampered_stage_is_damaged_and_never_skipped(case, finished, copy_run):
    stage, tamper, needle = TAMPER[case]
    run_dir = copy_run()
    assert statuses(finished[0], run_dir)[stage][0] == "done"
    tamper(run_dir)
    state, detail = statuses(finished[0], run_dir)[stage]  # `status`: the size + mtime fast path
    assert state == "damaged" and needle in detail and "--repair" in detail
    later = list(statuses(finished[0], run_dir))[list(statuses(finished[0], run_dir)).index(stage) + 1:]
    assert all(statuses(finished[0], run_dir)[s][0] == "stale" for s in later)
    with pytest.raises(CheckpointError) as err:  # `run`: exit 4, nothing re-trained silently
        Runner(load_config(finished[0]), run_dir, quiet=True).run()
    assert err.value.exit_code == 4 and needle in str(err.value)


def test_same_size_flip_with_restored_mtime_is_caught_by_the_deep_check(finished, copy_run):
    run_dir = copy_run()
    path = run_dir / "finetune" / "model.safetensors"
    st = path.stat()
    flip_byte(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot: same size, same mtime
    assert statuses(finished[0], run_dir)["finetune"][0] == "done"  # the fast path cannot see it ...
    state, detail = statuses(finished[0], run_dir, deep=True)["finetune"]  # ... the skip check hashes it
    assert state == "damaged" and "sha256" in detail


def test_cli_refuses_then_repairs_a_deleted_onnx(finished, copy_run, capsys):
    run_dir = copy_run()
    original = (run_dir / "export" / "model.onnx").read_bytes()
    (run_dir / "export" / "model.onnx").unlink()
    assert main(["status", str(run_dir), "--config", str(finished[0])]) == 4
    out = capsys.readouterr().out
    assert "damaged" in out and "model.onnx" in out
    assert main(["run", str(finished[0]), "--run-dir", str(run_dir), "-q"]) == 4
    err = capsys.readouterr().err
    assert "model.onnx is missing" in err and "--repair" in err and "done, skipped" not in err.split("export")[-1]
    assert main(["run", str(finished[0]), "--run-dir", str(run_dir), "-q", "--repair"]) == 0
    captured = capsys.readouterr()
    assert "[warmup] done, skipped" in captured.err and "[export] running export (--repair)" in captured.err
    assert "[runtime_check] running" in captured.err
    assert (run_dir / "export" / "model.onnx").read_bytes() == original
    assert f"export: {run_dir / 'export' / 'model.onnx'}" in captured.out  # the summary is on stdout
    assert {s: v[0] for s, v in statuses(finished[0], run_dir).items()} == dict.fromkeys(
        ["warmup", "finetune", "evaluate", "export", "runtime_check"], "done")


def test_report_and_compare_leave_an_edited_record_out(finished, copy_run, tmp_path):
    from pipeline.engine.rundir import RunDir, StageRecord

    run_dir = copy_run()
    _edit_metric(run_dir / "evaluate" / "stage.json")
    view = {s.name: s for s in RunDir(run_dir).stages}
    assert view["evaluate"].status == "damaged" and view["evaluate"].data == {}
    with pytest.raises(CheckpointError, match="altered"):
        StageRecord.finished_stage(run_dir, "evaluate")


def test_a_stage_folder_removed_as_a_whole_is_pending_not_damaged(finished, copy_run):
    run_dir = copy_run()
    shutil.rmtree(run_dir / "runtime_check")  # a deliberate `rm -r`: nothing finished is left to protect
    assert statuses(finished[0], run_dir)["runtime_check"][0] == "pending"


def test_a_legacy_run_without_integrity_record_is_adopted(finished, copy_run):
    run_dir = copy_run()
    (run_dir / integrity.INTEGRITY_JSON).unlink()
    Runner(load_config(finished[0]), run_dir, quiet=True).run()  # all skipped, after a full hash check
    assert set(json.loads((run_dir / integrity.INTEGRITY_JSON).read_text())["stages"]) == \
        {"warmup", "finetune", "evaluate", "export", "runtime_check"}


def test_read_only_finished_run_still_runs_status_and_reports(finished, copy_run, capsys, tmp_path, monkeypatch):
    from pipeline.engine import runguard

    run_dir = copy_run()
    real_access = os.access
    # the tests may run as root, whom chmod does not stop: the directory answers "read-only" instead
    monkeypatch.setattr(runguard.os, "access", lambda p, mode: False if os.fspath(p) == os.fspath(run_dir)
                        else real_access(p, mode))
    log = (run_dir / "run.log").read_bytes()
    assert main(["run", str(finished[0]), "--run-dir", str(run_dir), "-q"]) == 0
    assert "read-only run directory" in capsys.readouterr().err
    assert (run_dir / "run.log").read_bytes() == log and not (run_dir / ".lock").exists()  # nothing written
    assert main(["status", str(run_dir)]) == 0
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r.md")]) == 0
    assert main(["run", str(finished[0]), "--run-dir", str(run_dir), "--from", "export"]) == 2
    assert "is read-only" in capsys.readouterr().err


# --- kills inside evaluate and export --------------------------------------------------------------

@pytest.mark.parametrize("stage", ["evaluate", "export"])
def test_kill_inside_evaluate_or_export_then_resume(stage, finished, copy_run):
    run_dir = copy_run()
    killed = run_cli("run", str(finished[0]), "--run-dir", str(run_dir), "-q", "--from", stage,
                     env={"PIPELINE_FAULT_IN_STAGE": stage})
    assert killed.returncode == -signal.SIGKILL
    assert not (run_dir / stage / "stage.json").exists()
    assert statuses(finished[0], run_dir)[stage][0] == "pending"  # outputs without a record: redone
    resumed = run_cli("run", str(finished[0]), "--run-dir", str(run_dir), check=True)
    assert "stale lock" in resumed.stderr and "resuming from its saved progress" not in resumed.stderr
    assert f"[{stage}] running" in resumed.stderr and "[finetune] done, skipped" in resumed.stderr
    ref = finished[1]
    assert (run_dir / "export" / "model.onnx").read_bytes() == (ref / "export" / "model.onnx").read_bytes()
    got = json.loads((run_dir / "evaluate" / "stage.json").read_text())["metrics"]
    want = json.loads((ref / "evaluate" / "stage.json").read_text())["metrics"]
    assert got == want


# --- 3. non-finite training ------------------------------------------------------------------------

def test_non_finite_loss_stops_the_stage_and_keeps_the_last_good_save(tmp_path, monkeypatch):
    from pipeline.train import loop

    cfg = small_config()
    cfg["stages"] = cfg["stages"][:1]
    cfg["stages"][0].update({"epochs": 3, "max_steps_per_epoch": 3, "eval": {"robust": False, "val_limit": 16,
                                                                              "test_limit": 16}})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    real = loop.lr_at
    # a schedule that explodes in the second epoch, as `lr: .inf` did before validation refused it
    monkeypatch.setattr(loop, "lr_at", lambda s, lr, epoch, *a: 1e38 if epoch >= 1 else real(s, lr, epoch, *a))
    with pytest.raises(loop.finite.NonFiniteTraining) as err:
        Runner(load_config(path), tmp_path / "run", quiet=True).run()
    text = str(err.value)
    assert err.value.exit_code == 5 and "epoch 2" in text and "optimizer.lr" in text
    assert ("nan" in text or "inf" in text)
    manifest = json.loads((tmp_path / "run" / "warmup" / "progress" / "manifest.json").read_text())
    assert manifest["epoch"] == 1 and manifest["step_in_epoch"] == 0  # the save after epoch 1 survives
    assert json.loads((tmp_path / "run" / "warmup" / "failed.json").read_text())["error"].startswith("stage 'warmup'")


def test_unexpected_os_error_inside_a_stage_is_exit_1_plain(tmp_path, monkeypatch):
    from stages.export import Export

    cfg = small_config()
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))

    def full_disk(self, ctx):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(ctx.dir / "model.onnx"))

    monkeypatch.setattr(Export, "run", full_disk)
    runner = Runner(load_config(path), tmp_path / "run", quiet=True)
    runner.cfg.stages = runner.cfg.stages[3:4]  # export alone, with no input: the error comes first
    runner.cfg.stages[0].input = None
    with pytest.raises(StageCrashed) as err:
        runner.run()
    assert err.value.exit_code == 1 and "No space left on device" in str(err.value)
    assert "internal error" not in str(err.value)


# --- 4./5. user faults: configs, flags, data ------------------------------------------------------

def _npz(path, **over):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8), "y_train": np.arange(40) % 4,
              "x_val": rng.integers(0, 256, (8, 6, 6, 3), dtype=np.uint8), "y_val": np.arange(8) % 4,
              "x_test": rng.integers(0, 256, (8, 6, 6, 3), dtype=np.uint8), "y_test": np.arange(8) % 4}
    arrays.update(over)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _base() -> dict:
    return {"run": {"name": "t"}, "data": {"dataset": "digits"},
            "stages": [{"name": "warmup", "type": "dense_warmup", "epochs": 2, "schedule": {"kind": "constant"}}]}


def _with(**stage):
    cfg = _base()
    cfg["stages"][0].update(stage)
    return cfg


BAD_CONFIGS = {
    "lr inf": (_with(optimizer={"lr": float("inf")}), 2, "finite"),
    "weight_decay inf": (_with(optimizer={"weight_decay": float("inf")}), 2, "finite"),
    "lr absurd": (_with(optimizer={"lr": 1000}), 2, "optimizer.lr"),
    "weight_decay absurd": (_with(optimizer={"weight_decay": 5}), 2, "weight_decay"),
    "eps 8 instead of 8/255": (_with(attack={"eps": 8}), 2, "8/255"),
    "step > eps": (_with(attack={"eps": "2/255", "step": "8/255"}), 2, "larger than eps"),
    "milestones beyond epochs": (_with(schedule={"kind": "multistep", "milestones": [5]}), 2, "milestones"),
    "boolean epochs": (_with(epochs=True), 2, "boolean"),
    "boolean lr": (_with(optimizer={"lr": True}), 2, "boolean"),
    "boolean eps": (_with(attack={"eps": False}), 2, "boolean"),
    "nan eps": (_with(attack={"eps": float("nan")}), 2, "finite"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_table(case, tmp_path, capsys):
    tree, code, word = BAD_CONFIGS[case]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert main(["validate", str(path)]) == code
    err = capsys.readouterr().err
    assert word in err and "internal error" not in err


BAD_FILES = {
    "binary file": (b"\xff\xd8\xff\xe0JFIF\x00\x01", 2, "not a text"),
    "NUL bytes": (b"run: {name: x}\x00\n", 2, "NUL"),
    "duplicate key": (b"run: {name: x}\nstages:\n  - name: w\n    type: dense_warmup\n    epochs: 2\n    epochs: 3\n",
                      2, "duplicate key 'epochs' at line 6"),
    "duplicate top-level key": (b"run: {name: x}\nrun: {name: y}\nstages: []\n", 2, "duplicate key 'run'"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_config_files(case, tmp_path, capsys):
    data, code, word = BAD_FILES[case]
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    assert main(["validate", str(path)]) == code
    err = capsys.readouterr().err
    assert word in err and str(path) in err


BAD_DATA = {
    "float images": ({"x_train": np.zeros((40, 6, 6, 3), np.float32)}, "'x_train' has dtype float32"),
    "wrong shape": ({"x_test": np.zeros((8, 6, 6, 5), np.uint8)}, "'x_test' has shape"),
    "float labels": ({"y_train": np.zeros(40, np.float64)}, "'y_train' has dtype float64"),
    "negative label": ({"y_val": np.full(8, -1)}, "'y_val' holds label -1"),
    "label count mismatch": ({"y_train": np.zeros(39, np.int64)}, "'y_train' has shape (39,)"),
    "million-class label": ({"y_train": np.r_[np.arange(39) % 4, 999_999]}, "999999"),
    "missing array": ({"x_test": None}, "missing array 'x_test'"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_refused_before_anything_is_written(case, tmp_path, capsys):
    over, word = BAD_DATA[case]
    npz = _npz(tmp_path / "d.npz", **over)
    tree = _base()
    tree["data"] = {"dataset": "npz", "path": str(npz)}
    tree["run"]["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert word in err and str(npz) in err
    assert main(["run", str(path), "-q"]) == 2
    assert not (tmp_path / "runs").exists()


def test_validate_reports_the_data_and_prints_the_resolved_config(tmp_path, capsys):
    npz = _npz(tmp_path / "d.npz")
    tree = _base()
    tree["data"] = {"dataset": "npz", "path": str(npz)}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert main(["validate", str(path), "--print"]) == 0
    out = capsys.readouterr().out
    assert "40/8/8 train/val/test images 6x6x3, 4 classes" in out
    resolved = yaml.safe_load(out.split(f"{path}: ok")[0])
    assert resolved["stages"][0]["optimizer"]["momentum"] == 0.9  # defaults filled in


def test_every_shipped_recipe_validates_in_a_fresh_clone(tmp_path, monkeypatch):
    from tests.conftest import REPO

    monkeypatch.chdir(tmp_path)  # nothing of the development checkout around
    (tmp_path / "images").mkdir()
    for recipe in sorted((REPO / "configs").glob("*.yaml")):
        # an image folder cannot download: the user points data.root at it (a stand-in here)
        overrides = [f"data.root={tmp_path / 'images'}"] if "dataset: imagefolder" in recipe.read_text() else []
        load_config(recipe, overrides)


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_user_faults_are_user_errors(finished, tmp_path, capsys):
    cfg_path, run_dir = finished
    onnx = run_dir / "export" / "model.onnx"
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(100_000, 100_000))
    afile = tmp_path / "afile"
    afile.write_text("x")
    digit = tmp_path / "digit.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(digit)
    cases = [
        (["predict", str(junk), str(digit)], 2, "not a readable ONNX model"),
        (["predict", str(cut), str(digit)], 2, "not a readable ONNX model"),
        (["bench", str(cut)], 2, "not a readable ONNX model"),
        (["predict", str(onnx), str(bomb)], 2, "decompression bomb"),
        (["bench", str(onnx), "--batch-sizes", "0"], 2, "--batch-sizes"),
        (["status", str(tmp_path)], 2, "not a run directory"),
        (["report", str(tmp_path / "nothing")], 2, "does not exist"),
        (["compare", str(run_dir), str(run_dir), "--label", "a"], 2, "--label given 1 time"),
        (["run", str(cfg_path), "--run-dir", str(afile / "run")], 2, "is a file"),
        (["run", str(cfg_path), "--run-dir", str(run_dir), "--from", "export", "--until", "warmup"], 2, "comes after"),
    ]
    if not torch.cuda.is_available():
        cases.append((["run", str(cfg_path), "--run-dir", str(tmp_path / "r"), "--device", "cuda"], 2, "CUDA"))
    for argv, code, word in cases:
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert word in err and "internal error" not in err, (argv, err)
    assert main(["predict", str(onnx), str(digit), "--top", "2"]) == 0
    for argv in (["bench", str(onnx), "--runs", "0"], ["bench", str(onnx), "--threads", "0"],
                 ["predict", str(onnx), str(digit), "--top", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "must be >= 1" in capsys.readouterr().err


# --- 6. messages at the edges -----------------------------------------------------------------------

def test_edge_messages(tmp_path):
    from pipeline.engine import runguard
    from pipeline.engine.context import StageContext
    from pipeline.engine.progress import progress_detail

    assert progress_detail({"epoch": 0, "step": 3, "step_in_epoch": 3}) == "epoch 1 (part done), step 3"
    assert progress_detail({"epoch": 2, "step": 12, "step_in_epoch": 0}) == "epoch 2 (done), step 12"
    assert "--from" in progress_detail({})

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_base()))
    cfg = load_config(path)
    runner = Runner(cfg, tmp_path / "run", quiet=True)
    note = runguard.stale_lock_note(runner, {"raw": "\x00\x01"})
    assert "unreadable" in note and "None" not in note and "resuming" not in note

    ctx = StageContext(pipeline_config=cfg, stage_cfg=cfg.stages[0], run_dir=tmp_path / "run", device="cpu",
                       console=runner.console, fingerprint="fp", data_cache={})
    ctx.progress_dir.mkdir(parents=True)
    (ctx.progress_dir / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="--from warmup"):
        ctx.load_progress()


def test_long_attacks_report_progress_without_a_terminal(monkeypatch, capsys):
    from pipeline.engine import console as console_mod
    from pipeline.metrics.attacks import AttackConfig
    from pipeline.metrics.evaluation import evaluate

    monkeypatch.setattr(console_mod, "HEARTBEAT_SECONDS", 0.0)
    monkeypatch.setattr(console_mod, "_ACTIVE", [])
    con = console_mod.Console(quiet=False)
    con.bars = False  # as in CI or `> log`
    con.activate()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    x, y = torch.rand(12, 3, 4, 4), torch.arange(12) % 3
    evaluate(model, x, y, batch_size=4, attack=AttackConfig(steps=2, restarts=2), device="cpu")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "PGD-2x2 images" in ln]
    assert lines and "4/12" in lines[0] and "min left" in lines[0]


def test_compare_marks_a_damaged_stage(finished, copy_run, tmp_path):
    from pipeline.reporting.compare import compare_runs

    run_dir = copy_run()
    _edit_metric(run_dir / "evaluate" / "stage.json")
    text, _ = compare_runs([finished[1], run_dir], tmp_path / "cmp.md", labels=["good", "edited"])
    assert "edited: DAMAGED stage(s) evaluate" in text and "good: DAMAGED" not in text
    assert "99.9" not in text
