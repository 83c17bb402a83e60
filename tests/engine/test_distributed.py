"""torchrun on CPU (gloo, 2 real processes): equivalence with one process, identical masks, resume, errors.

A 2-process run with global batch B matches the 1-process run with batch B within float rounding, not
bit for bit: DDP averages the two half-batch gradients ((g0 + g1) / 2 instead of one sum over B), and
global BatchNorm sums its statistics in two parts; both reorder float additions (~1e-7 relative per
step). Tolerance: 1e-4 absolute on every weight after 8 steps (observed: ~1e-7). PGD training gets
the same random starts image for image, but each PGD step moves a pixel by sign(gradient), and a
gradient within rounding of 0 can flip sign: a whole step of difference in that pixel. So PGD-AT runs
agree more loosely: 5e-3 after 4 steps (observed: ~1e-3).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

TORCHRUN = Path(sys.executable).with_name("torchrun")
TOL, PGD_TOL = 1e-4, 5e-3
TRAIN = {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 4, "optimizer": {"lr": 0.05},
         "schedule": {"kind": "constant"}, "attack": {"steps": 2},
         "eval": {"val_limit": 48, "test_limit": 48, "robust": False}}
FBP = {"update_every": 2, "second_update_every": None, "second_after_epoch": None,
       "adaptive": {"start_epoch": 1, "window": 1, "prune_threshold": 0.0, "grow_threshold": 0.0}}


def torchrun(*args: str, nproc: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PIPELINE_DIST_TIMEOUT_S": "60",
                **(env or {})}
    return subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", str(nproc), "-m", "pipeline",
                           *args], capture_output=True, text=True, env=full_env, cwd=REPO, timeout=300)


def write(tmp_path: Path, stages: list[dict], seed: int = 4) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps({"run": {"name": "ddp", "seed": seed}, "data": {"dataset": "digits"},
                                "model": {"arch": "small_cnn"}, "stages": stages}))
    return path


def max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


STAGES = [{"name": "warmup", "type": "dense_warmup", "mode": "clean", **TRAIN},
          {"name": "warmup_pgd", "type": "dense_warmup", "mode": "pgd", **TRAIN, "epochs": 1},
          {"name": "rigl", "type": "rewire", "method": "rigl", "input": "warmup", "mode": "clean",
           "density": 0.3, **TRAIN, "sparsity": {"update_every": 2}},
          {"name": "fbp", "type": "rewire", "method": "flying_bird_plus", "input": None, "mode": "clean",
           "density": 0.3, **TRAIN, "eval": {"test_limit": 48, "robust": False}, "sparsity": FBP},  # FB+: all of val
          {"name": "evaluate", "type": "evaluate", "input": "fbp", "attack": {"steps": 2},
           "train_limit": 40, "val_limit": 40, "test_limit": 40},
          {"name": "export", "type": "export", "parity_samples": 16}]  # a rank-0-only stage


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same config run by one process and by torchrun with two."""
    tmp = tmp_path_factory.mktemp("ddp")
    path = write(tmp, STAGES)
    one, two = tmp / "one", tmp / "two"
    run_cli("run", str(path), "--run-dir", str(one), "-q", check=True)
    proc = torchrun("run", str(path), "--run-dir", str(two), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return one, two


def test_two_processes_match_one_with_identical_masks(runs):
    one, two = runs
    for stage in ("warmup", "warmup_pgd", "rigl", "fbp"):
        w1, w2 = load_file(one / stage / "model.safetensors"), load_file(two / stage / "model.safetensors")
        assert max_diff(w1, w2) < (PGD_TOL if stage == "warmup_pgd" else TOL), stage
        rec = json.loads((two / stage / "stage.json").read_text())
        assert rec["distributed"] == {"world_size": 2, "global_batch_size": 64, "per_rank_batch_size": 32,
                                      "backend": "gloo", "batch_norm": "global"}
        assert "distributed" not in json.loads((one / stage / "stage.json").read_text())
        if stage in ("rigl", "fbp"):  # the topology decisions are the single process's, entry for entry
            m1, m2 = load_file(one / stage / "masks.safetensors"), load_file(two / stage / "masks.safetensors")
            assert all(torch.equal(m1[k], m2[k]) for k in m1), stage
            assert all(torch.all(w2[k][~m2[k].bool()] == 0) for k in m2)  # masked weights exactly zero
            u1 = [json.loads(l) for l in (one / stage / "updates.jsonl").read_text().splitlines()]
            u2 = [json.loads(l) for l in (two / stage / "updates.jsonl").read_text().splitlines()]
            assert [u["layer_changed"] for u in u1] == [u["layer_changed"] for u in u2] and u1
    h1 = [json.loads(l) for l in (one / "fbp" / "history.jsonl").read_text().splitlines()]
    h2 = [json.loads(l) for l in (two / "fbp" / "history.jsonl").read_text().splitlines()]
    assert [r["val_sa"] for r in h1] == [r["val_sa"] for r in h2]  # evaluation is split, then summed
    assert [r["train_acc"] for r in h1] == [r["train_acc"] for r in h2]
    e1, e2 = (json.loads((d / "evaluate" / "stage.json").read_text())["metrics"] for d in (one, two))
    for split in ("train", "val", "test"):  # split across ranks, then summed
        assert e1[f"{split}_sa"] == e2[f"{split}_sa"] and e2[f"{split}_n"] == 40
        assert abs(e1[f"{split}_ra"] - e2[f"{split}_ra"]) <= 10.0  # per-rank attack starts: same distribution
    assert (two / "export" / "model.onnx").exists()
    assert not list(two.glob("**/progress")) and (two / "run.log").exists()


def test_kill_one_rank_then_resume_and_wrong_world_size(runs, tmp_path):
    one, _ = runs
    # the warmup stage alone, saving progress every 2 steps (not fingerprinted: `one` is its reference)
    warmup = {**STAGES[0], "progress_every_steps": 2}
    path = write(tmp_path, [warmup])
    cut = tmp_path / "cut"
    # rank 1 SIGKILLs itself after step 7; rank 0's next collective fails at once and torchrun stops the job
    killed = torchrun("run", str(path), "--run-dir", str(cut), "-q",
                      env={"PIPELINE_FAULT_AFTER_STEPS": "7", "PIPELINE_FAULT_RANK": "1"})
    assert killed.returncode != 0
    manifest = json.loads((cut / "warmup" / "progress" / "manifest.json").read_text())
    assert manifest["step"] == 6

    wrong = run_cli("run", str(path), "--run-dir", str(cut), "-q")
    assert wrong.returncode == 6, wrong.stderr
    assert "written by 2 process(es) but this run has 1" in wrong.stderr and "Traceback" not in wrong.stderr

    resumed = torchrun("run", str(path), "--run-dir", str(cut))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from saved progress" in resumed.stderr
    assert max_diff(load_file(one / "warmup" / "model.safetensors"),
                    load_file(cut / "warmup" / "model.safetensors")) < TOL


def test_global_batch_must_divide_across_ranks(monkeypatch):
    from pipeline.engine import distributed
    from pipeline.engine.errors import ConfigError

    monkeypatch.setattr(distributed, "_world", distributed.World(0, 2, 0))
    distributed.check_batch_size(64, 1000, False, "stages.warmup")
    with pytest.raises(ConfigError, match=r"stages.warmup.batch_size: 63 \(global\) does not divide across 2"):
        distributed.check_batch_size(63, 1000, False, "stages.warmup")
    with pytest.raises(ConfigError, match="last batch of an epoch has 1 image"):
        distributed.check_batch_size(64, 129, False, "stages.warmup")
    distributed.check_batch_size(64, 129, True, "stages.warmup")
    assert [distributed.shard(5, r, 2) for r in (0, 1)] == [(0, 3), (3, 5)]


def _mismatch_worker(rank: int, port: int, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    from pipeline.engine import distributed
    from pipeline.engine.config import DistributedSection

    torch.set_num_threads(1)
    distributed.init(DistributedSection(), torch.device("cpu"))
    masks = {"a.weight": torch.ones(4, dtype=torch.bool), "b.weight": torch.ones(3, dtype=torch.bool)}
    distributed.sync_masks(masks, "same")  # identical: passes
    if rank == 1:
        masks["b.weight"][1] = False
    try:
        distributed.sync_masks(masks, "test update")
        msg = "no error"
    except distributed.DistributedError as exc:
        msg = str(exc)
    Path(out, f"rank{rank}.txt").write_text(msg)
    distributed.shutdown()


def test_sync_masks_names_the_layer_that_differs(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_mismatch_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        msg = (tmp_path / f"rank{rank}.txt").read_text()
        assert "test update: the masks of rank 1 differ from rank 0's at layer 'b.weight'" in msg
