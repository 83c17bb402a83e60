"""benchmarks/double_win_reduced.py: the class split it transfers across, and its smoke mode end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))
import double_win_reduced as dw  # noqa: E402  (a script beside reduced_common, not a package)


def _fake_subset(path, per_class=(12, 8, 3), size=8):
    """A CIFAR-like .npz: 10 classes, train/val/test of per_class images each, labels in file order mixed."""
    rng = np.random.default_rng(0)
    arrays = {"label_names": np.array([f"c{i}" for i in range(10)])}
    for split, n in zip(("train", "val", "test"), per_class):
        y = rng.permutation(np.repeat(np.arange(10), n))
        # class-dependent brightness, so a few steps of training learn something
        x = (rng.integers(0, 60, (len(y), size, size, 3)) + 18 * y[:, None, None, None]).astype(np.uint8)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    np.savez(path, **arrays)
    return arrays


def test_class_split_keeps_every_image_once(tmp_path):
    src = _fake_subset(tmp_path / "subset.npz")
    a, b = dw.task_arrays(tmp_path / "subset.npz", 4, transfer_val=30)
    assert list(a["label_names"]) == ["c0", "c1", "c2", "c3"] and len(b["label_names"]) == 6
    for split in ("train", "val", "test"):
        assert set(np.unique(a[f"y_{split}"])) == {0, 1, 2, 3}
        assert np.array_equal(a[f"x_{split}"], src[f"x_{split}"][src[f"y_{split}"] < 4])
    assert np.array_equal(b["x_train"], src["x_train"][src["y_train"] >= 4])
    assert np.array_equal(b["y_train"], src["y_train"][src["y_train"] >= 4] - 4)
    # B's val: 30 // 6 = 5 images of every class; the other 3 val-pool images per class join B's test
    assert np.bincount(b["y_val"]).tolist() == [5] * 6
    assert np.bincount(b["y_test"]).tolist() == [3 + 3] * 6
    pool = src["x_val"][src["y_val"] >= 4]
    both = np.concatenate([b["x_val"], b["x_test"][-18:]])
    assert sorted(map(bytes, both)) == sorted(map(bytes, pool))  # no pool image lost or duplicated


def test_bad_split_is_a_clear_error(tmp_path, capsys):
    _fake_subset(tmp_path / "subset.npz")
    rc = dw.main(["--data", str(tmp_path / "subset.npz"), "--split-classes", "10", "--out", str(tmp_path / "o"),
                  "--device", "cpu"])
    assert rc == 2
    assert "--split-classes 10" in capsys.readouterr().err
    rc = dw.main(["--data", str(tmp_path / "subset.npz"), "--transfer-val", "999", "--out", str(tmp_path / "o"),
                  "--device", "cpu"])
    assert rc == 2
    assert "--transfer-val 999" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a common flag the per-phase settings would silently override
        dw.main(["--data", str(tmp_path / "subset.npz"), "--train-attack-steps", "3", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "--adv-steps" in capsys.readouterr().err


def test_stage_blocks_follow_the_reference_defaults(tmp_path):
    _fake_subset(tmp_path / "subset.npz")
    args = dw.parse(["--data", str(tmp_path / "subset.npz"), "--device", "cpu", "--out", str(tmp_path / "o")])
    source, runs = dw.models(args, tmp_path / "b.npz")
    pretrain, tickets, _ = source.stages
    assert pretrain["attack"] == {"eps": "8/255", "step": "2/255", "steps": 10}
    assert pretrain["schedule"]["milestones"] == [100, 150] and pretrain["select"] == "best"
    assert tickets["rounds"] == 10 and tickets["prune_before_training"] and tickets["rewind_to"] == "pretrained"
    assert tickets["attack"] == {"eps": "8/255", "step": "16/765", "steps": 3}  # DW's PGD-3
    assert tickets["optimizer"] == {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
    assert [r.key for r in runs] == [f"{t}_{m}" for t in ("dense", "r2", "r6", "r10") for m in ("std", "adv")]
    std, adv = runs[2].stages[3], runs[3].stages[3]
    assert std["ticket_round"] == 2 and std["mode"] == "clean" and std["batch_size"] == 64
    assert std["epochs"] == 150 and std["schedule"]["milestones"] == [50, 100] and not std["eval"]["robust"]
    assert adv["epochs"] == 100 and adv["schedule"]["milestones"] == [50, 75] and adv["attack"]["steps"] == 10
    assert runs[0].stages[3]["input"] == "pretrain" and "ticket_round" not in runs[0].stages[3]


@pytest.mark.slow
def test_smoke_mode_end_to_end(tmp_path):
    _fake_subset(tmp_path / "subset.npz")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "double_win_reduced.py"), "--data", str(tmp_path / "subset.npz"), "--arch",
         "small_cnn", "--epochs", "1", "--std-epochs", "1", "--pretrain-epochs", "1", "--imp-epochs", "1",
         "--ticket-rounds", "1", "--transfer-val", "20", "--limit-steps", "1", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("verdict: the direction of Double-Win") and "at smoke scale" in lines[-1]
    assert "Highest double-win sparsity" in proc.stdout

    tickets = json.loads((out / "double_win_reduced.tickets.json").read_text())
    assert [t["key"] for t in tickets] == ["dense", "r1"]
    assert tickets[1]["sparsity"] == pytest.approx(0.2)
    for t in tickets:
        for m in ("std_sa", "adv_sa", "adv_ra", "std_ra"):
            assert 0 <= t[m] <= 100
    # the ticket run fine-tuned IMP round 1 on task B (5 classes) and kept its mask
    stage = json.loads((out / "r1_adv" / "r1_adv" / "stage.json").read_text())
    assert stage["transfer"]["masks"]["source_sparsity"] == pytest.approx(0.2, abs=1e-3)
    assert stage["transfer"]["target"]["num_classes"] == 5
    assert stage["metrics"]["density"] < 1
    # the source stages were shared, not retrained: the same weights file in every run
    src = (out / "source" / "pretrain" / "model.safetensors").read_bytes()
    assert (out / "dense_std" / "pretrain" / "model.safetensors").read_bytes() == src
    assert "[pretrain] done, skipped" in proc.stdout + proc.stderr
