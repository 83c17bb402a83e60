"""The training loop's pieces with known answers: learning-rate schedules and the fast-AT path."""
from __future__ import annotations

import json

import pytest

from pipeline.train.loop import ScheduleConfig, TrainingConfig, lr_at

from tests.conftest import run_cli, tiny_config


def test_multistep_schedule():
    s = ScheduleConfig(kind="multistep", milestones=[100, 150], gamma=0.1)
    assert [lr_at(s, 0.1, e, 0, 352, 200) for e in (0, 99, 100, 149, 150, 199)] == \
           pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cosine_schedule_is_per_iteration():
    s = ScheduleConfig(kind="cosine", min_lr=0.0)
    assert lr_at(s, 0.1, 0, 0, 10, 4) == pytest.approx(0.1)
    assert lr_at(s, 0.1, 2, 0, 10, 4) == pytest.approx(0.05)  # half way
    assert lr_at(s, 0.1, 3, 5, 10, 4) == pytest.approx(0.1 * 0.5 * (1 + __import__("math").cos(3.5 / 4 * 3.141592653589793)))


def test_cyclic_schedule_of_fast_at():
    s = ScheduleConfig(kind="cyclic", peak_fraction=0.4)  # 0 -> 0.2 at 2/5 of training -> 0
    values = [lr_at(s, 0.2, e, 0, 10, 10) for e in (0, 2, 4, 7, 10)]
    assert values == pytest.approx([0.0, 0.1, 0.2, 0.1, 0.0])


def test_mode_sets_the_training_attack():
    assert TrainingConfig(mode="clean").attack.kind == "none"
    fast = TrainingConfig(mode="fast", attack={"eps": "8/255"})
    assert (fast.attack.kind, fast.attack.steps) == ("fgsm_rs", 1)
    assert fast.attack.step == pytest.approx(1.25 * 8 / 255)


def test_fast_at_stage_runs_and_counts_one_attack_step(write_config, tmp_path):
    cfg = tiny_config(warmup={"mode": "fast", "epochs": 1, "schedule": {"kind": "cyclic"}})
    cfg["stages"] = cfg["stages"][:1]
    run_dir = tmp_path / "run"
    run_cli("run", str(write_config(cfg)), "--run-dir", str(run_dir), "-q", check=True)
    rec = json.loads((run_dir / "warmup" / "stage.json").read_text())
    assert rec["config"]["attack"]["kind"] == "fgsm_rs" and rec["config"]["attack"]["steps"] == 1
    training = rec["flops"]["training"]
    assert training["attack_steps"] == 1
    f = rec["flops"]["inference"]["sparse_flops"]
    assert training["paper"] == pytest.approx(6 * f * training["images"])  # (1 + 1) x 3F per image
    assert training["corrected"] == pytest.approx(5 * f * training["images"])  # 3F update + 2F attack step
