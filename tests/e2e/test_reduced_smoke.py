"""The reduced-scale reproduction scripts: their flags (hand-checked values) and the smoke mode of
benchmarks/sparsity_win_reduced.py end to end on a generated CIFAR-shaped .npz."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import reduced_common as rc  # noqa: E402


def _fake_cifar(path, n_train=120, n_val=60, n_test=60, seed=0):
    """Random 32x32 RGB images, labels cycling through 10 classes (so every split is balanced)."""
    rng = np.random.default_rng(seed)
    arrays = {"label_names": np.array([f"c{i}" for i in range(10)])}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        arrays[f"x_{split}"] = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        arrays[f"y_{split}"] = np.arange(n, dtype=np.int64) % 10
    np.savez(path, **arrays)
    return path


def _args(tmp_path, *extra):
    data = _fake_cifar(tmp_path / "fake.npz")
    return rc.parse(rc.sw_parser(rc.__doc__, "sparsity_win_reduced"),
                    ["--data", str(data), "--out", str(tmp_path / "out"), "--device", "cpu", *extra])


def test_milestones_drop_the_ones_that_never_fire():
    assert rc.milestones(40, 1 / 2, 3 / 4) == [20, 30]
    assert rc.milestones(20, 1 / 4, 3 / 4) == [5, 15]
    assert rc.milestones(1, 1 / 2, 3 / 4) == []  # the engine refuses a written milestone >= epochs
    assert rc.milestones(2, 1 / 2, 3 / 4) == [1]


def test_training_attack_defaults_and_short_pgd(tmp_path):
    default = rc.training(_args(tmp_path))
    assert default["attack"] == {"eps": "8/255", "step": "2/255", "steps": 10}
    assert default["eval"]["attack"]["steps"] == 20
    short = rc.training(_args(tmp_path, "--train-attack-steps", "3", "--eval-attack-steps", "10"))
    assert short["attack"]["steps"] == 3
    assert float(Fraction(short["attack"]["step"])) == pytest.approx(2.5 * 8 / 255 / 3)
    assert short["eval"]["attack"]["steps"] == 10
    assert default["batch_size"] == 128
    small = _args(tmp_path, "--batch-size", "32", "--sizes", "64,20,20")
    assert rc.training(small)["batch_size"] == 32
    assert rc.steps_like(900, small) == round(900 / 352 * 2)  # 64 images at batch 32: 2 steps per epoch


def test_sizes_write_a_balanced_subset_once(tmp_path):
    args = _args(tmp_path, "--sizes", "50,20,30")
    assert args.train_images == 50 and args.data.parent == tmp_path / "out" / "data"
    with np.load(args.data) as d:
        assert [len(d[f"y_{s}"]) for s in ("train", "val", "test")] == [50, 20, 30]
        assert np.bincount(d["y_train"], minlength=10).tolist() == [5] * 10
        assert d["x_val"].shape == (20, 32, 32, 3)
    stamp = args.data.stat().st_mtime_ns
    assert _args(tmp_path, "--sizes", "50,20,30").data.stat().st_mtime_ns == stamp  # a resume reuses it
    # FB's 900-step interval of the papers' 352 steps per epoch, as epochs of 50 images at batch 128
    assert rc.steps_like(900, args) == round(900 / 352 * 1)


@pytest.mark.parametrize("flags, message", [
    (["--sizes", "50,20"], "three positive image counts"),
    (["--sizes", "500,20,30"], "train 500 exceeds the 120 train images"),
    (["--train-attack-steps", "0"], "--train-attack-steps must be > 0"),
    (["--batch-size", "-1"], "--batch-size must be > 0"),
])
def test_bad_flags_are_clear_errors(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        _args(tmp_path, *flags)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_sparsity_win_smoke_runs_end_to_end(tmp_path):
    data = _fake_cifar(tmp_path / "fake.npz")
    out = tmp_path / "sw"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "sparsity_win_reduced.py"), "--epochs", "1", "--limit-steps", "2",
         "--arch", "small_cnn", "--sizes", "100,40,40", "--train-attack-steps", "3", "--data", str(data),
         "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("verdict: the direction of Sparsity Winning Twice")
    assert "at smoke scale (not evidence)" in lines[-1]
    assert "dense per-epoch curve:" in proc.stdout and "| 1 (best val) |" in proc.stdout
    rows = json.loads((out / "sparsity_win_reduced.summary.json").read_text())
    assert [r["key"] for r in rows] == ["dense", "robust_bird", "flying_bird", "flying_bird_plus"]
    assert all(r["density"] == pytest.approx(0.2, abs=0.01) for r in rows[1:])
    cfg = json.loads((out / "configs" / "dense.json").read_text())
    assert cfg["data"]["path"] == str(out / "data" / "fake-100-40-40.npz")
    assert cfg["stages"][0]["schedule"]["milestones"] == []


def test_seeds_summary_reads_lower_is_better_metrics(tmp_path, capsys):
    import seeds_summary

    paths = []
    for seed, (dense_diff, sparse_diff, dense_ra, sparse_ra) in enumerate([(6.0, 2.0, 30.0, 29.0),
                                                                           (5.0, 2.0, 31.0, 29.5)]):
        rows = [{"key": "dense", "label": "dense", "ra_diff": dense_diff, "ra_best": dense_ra, "density": 1.0},
                {"key": "fb", "label": "FB", "ra_diff": sparse_diff, "ra_best": sparse_ra, "density": 0.25}]
        paths.append(tmp_path / f"s{seed}.json")
        paths[-1].write_text(json.dumps(rows))
    assert seeds_summary.main([*map(str, paths), "--metrics", "ra_diff,ra_best,density",
                               "--lower", "ra_diff,density"]) == 0
    out = capsys.readouterr().out
    # paired differences: ra_diff -4, -3 (mean -3.5, std 0.71: lower is better, so it holds);
    # ra_best -1, -1.5 (mean -1.25, std 0.35: reversed)
    assert "FB - dense, ra_diff: -3.50 ± 0.71 pp over 2 seeds -> holds" in out
    assert "FB - dense, ra_best: -1.25 ± 0.35 pp over 2 seeds -> reversed" in out
    assert "FB - dense, density: -0.75 ± 0.00 over 2 seeds -> holds" in out  # a fraction: no "pp"
    assert out.strip().endswith("verdict: 2/3 model-metric differences beat the baseline by more than their "
                                "seed-to-seed std")
    with pytest.raises(SystemExit):
        seeds_summary.main([str(paths[0]), "--metrics", "ra_best", "--lower", "ra_diff"])
