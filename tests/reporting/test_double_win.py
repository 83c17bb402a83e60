"""The double-win decision (spec §4.3) on hand-made numbers and on hand-written run directories."""
from __future__ import annotations

import json

import pytest

from pipeline.engine import store
from pipeline.reporting.double_win import double_win_from_rows, double_win_table, format_double_win
from pipeline.engine.errors import PipelineError

DENSE = (90.0, 80.0, 45.0)  # standard SA, adversarial SA, adversarial RA
ROWS = [
    (0.488, 89.6, 80.2, 44.7),  # standard SA -0.4, RA -0.3
    (0.2, 90.5, 80.0, 45.1),    # matches or beats dense everywhere
    (0.36, 90.0, 79.8, 45.0),   # adversarial SA -0.2
    (0.59, 91.0, 81.0, 44.0),   # RA -1.0
    (0.672, 95.0, 90.0, None),  # RA not measured: undecided
]


@pytest.mark.parametrize("tolerance, expected", [(0.0, 0.2), (0.2, 0.36), (0.3, 0.36), (0.5, 0.488), (1.0, 0.59)])
def test_highest_matching_sparsity_with_and_without_tolerance(tolerance, expected):
    table = double_win_from_rows(ROWS, DENSE, tolerance)
    assert table["double_win_sparsity"] == expected
    assert [r["sparsity"] for r in table["rows"]] == [0.2, 0.36, 0.488, 0.59, 0.672]
    assert table["rows"][-1]["double_win"] is None


def test_per_metric_verdicts_and_markdown():
    table = double_win_from_rows(ROWS, DENSE)
    row = table["rows"][2]  # 0.488
    assert row["matches"] == {"std_sa": False, "adv_sa": True, "adv_ra": False}
    assert row["delta"]["std_sa"] == pytest.approx(-0.4) and row["double_win"] is False
    text = format_double_win(table)
    assert "| 0.00% (dense) | 90.00 | 80.00 | 45.00 | baseline |" in text
    assert "| 48.80% | 89.60 (-0.40) ✗ | 80.20 (+0.20) | 44.70 (-0.30) ✗ | no |" in text
    assert "| 67.20% | 95.00 (+5.00) | 90.00 (+10.00) | n/a | incomplete |" in text
    assert "Highest double-win sparsity: **20.00%**" in text


def test_no_ticket_matching_gives_none():
    table = double_win_from_rows([(0.5, 10.0, 10.0, 10.0)], DENSE)
    assert table["double_win_sparsity"] is None
    assert "**none**" in format_double_win(table)
    with pytest.raises(PipelineError, match="tolerance"):
        double_win_from_rows(ROWS, DENSE, -1.0)


def _stage(run_dir, name, *, mode, sparsity, history, transfer=True, fraction=1.0):
    """A finished finetune stage as the runner writes it: stage.json (+ sha of history.jsonl)."""
    folder = run_dir / name
    folder.mkdir(parents=True)
    sha = store.atomic_write_text(folder / "history.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    rec = {"name": name, "type": "finetune", "status": "done", "config": {"mode": mode},
           "metrics": {}, "files": {"history.jsonl": sha}}
    if transfer:
        rec["transfer"] = {
            "source": {"dataset": "cifar10", "arch": "preact_resnet18"},
            "target": {"dataset": "cifar100", "source": "cifar100", "train_fraction": fraction,
                       "subset": "balanced" if fraction < 1 else "all"},
            "masks": {"keep_mask": True, "source_layers": 0 if sparsity == 0 else 20,
                      "source_sparsity": sparsity}}
    (folder / "stage.json").write_text(json.dumps(rec))


def _std(first_val, first_test, second_val, second_test):
    return [{"epoch": 1, "val_sa": first_val, "test_sa": first_test},
            {"epoch": 2, "val_sa": second_val, "test_sa": second_test}]


def _adv(rows):
    return [{"epoch": i + 1, "val_sa": 0.0, "val_ra": v, "test_sa": sa, "test_ra": ra}
            for i, (v, sa, ra) in enumerate(rows)]


@pytest.fixture
def two_runs(tmp_path):
    a, b = tmp_path / "seed1", tmp_path / "seed2"
    _stage(a, "dense_std", mode="clean", sparsity=0.0, history=_std(50, 60, 40, 70))      # best val SA: epoch 1
    _stage(a, "dense_adv", mode="pgd", sparsity=0.0, history=_adv([(30, 50, 30), (35, 55, 32)]))  # best: epoch 2
    _stage(a, "t50_std", mode="clean", sparsity=0.5, history=_std(10, 20, 55, 61))        # 61
    _stage(a, "t50_adv", mode="pgd", sparsity=0.5, history=_adv([(40, 56, 33), (20, 90, 90)]))  # 56 / 33
    _stage(b, "dense_std", mode="clean", sparsity=0.0, history=_std(50, 62, 40, 99))      # 62: dense std = 61
    _stage(b, "t80_std", mode="clean", sparsity=0.8, history=_std(50, 65, 40, 0))         # 65
    _stage(b, "t80_adv", mode="pgd", sparsity=0.8, history=_adv([(40, 55, 31.5)]))        # RA 31.5 < 32
    _stage(b, "t80_fast", mode="fast", sparsity=0.8, history=_adv([(40, 99, 99)]))        # not a regime: left out
    _stage(b, "plain", mode="pgd", sparsity=0.0, history=_adv([(99, 0, 0)]), transfer=False)  # not a transfer
    _stage(b, "t80_adv_10pct", mode="pgd", sparsity=0.8, history=_adv([(1, 1, 1)]), fraction=0.1)  # other task
    return a, b


def test_table_from_run_directories(two_runs):
    result = double_win_table(list(two_runs))
    full = next(t for t in result["tables"] if t["task"]["train_fraction"] == 1.0)
    assert full["dense"] == {"std_sa": 61.0, "adv_sa": 55.0, "adv_ra": 32.0}
    (t50, t80) = full["rows"]
    assert (t50["sparsity"], t50["std_sa"], t50["adv_sa"], t50["adv_ra"], t50["double_win"]) == (0.5, 61, 56, 33, True)
    assert (t80["std_sa"], t80["adv_sa"], t80["adv_ra"], t80["double_win"]) == (65, 55, 31.5, False)
    assert full["double_win_sparsity"] == 0.5
    assert full["counts"]["0.0"] == {"standard": 2, "adversarial": 1}
    assert any("t80_fast" in note and "'fast'" in note for note in result["skipped"])

    # the 10% task has no dense baseline of its own: noted, and an error when it is all there is
    assert any("10% of the training data" in note and "no dense baseline" in note for note in result["skipped"])
    with pytest.raises(PipelineError, match="no dense baseline"):
        double_win_table([two_runs[1] / "t80_adv_10pct"])

    relaxed = double_win_table([two_runs[0], two_runs[1] / "t80_std", two_runs[1] / "t80_adv",
                                two_runs[1] / "dense_std"], tolerance=0.5)
    assert relaxed["tables"][0]["double_win_sparsity"] == 0.8
    text = format_double_win(relaxed)
    assert "best-val-SA epoch" in text and "Highest double-win sparsity: **80.00%**" in text

    final = double_win_table([two_runs[0]], select="final")["tables"][0]
    assert final["dense"] == {"std_sa": 70, "adv_sa": 55, "adv_ra": 32}
    assert final["rows"][0]["adv_ra"] == 90


def test_nothing_found_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="no finished finetune stage"):
        double_win_table([tmp_path / "empty"])
    with pytest.raises(PipelineError, match="not a run directory"):
        double_win_table([tmp_path / "missing"])


def _evaluate(run_dir, name, *, of, which, epoch, sa, ra, n=1000):
    """A finished evaluate stage of `of`'s `which` checkpoint, as stages/evaluate.py records it."""
    folder = run_dir / name
    folder.mkdir(parents=True)
    ck = {"epoch": epoch, "sa": {"test": sa}, "ra": {"pgd20": {"test": ra}, "autoattack": {"test": 0.0}}}
    rec = {"name": name, "type": "evaluate", "status": "done", "model_from": of, "config": {},
           "metrics": {"checkpoint": which, "splits": {"test": {"n": n, "sa": sa}}, "checkpoints": {which: ck}},
           "files": {}}
    (folder / "stage.json").write_text(json.dumps(rec))


def test_figures_come_from_an_evaluate_stage_of_the_compared_checkpoint(two_runs):
    """t50_adv's best epoch (1) was evaluated on the whole test split: its SA / first-attack RA replace the
    history row's; dense_std's evaluate measured epoch 2, not its best epoch 1, so its history row stays."""
    a, _ = two_runs
    _evaluate(a, "eval_t50_adv", of="t50_adv", which="best", epoch=1, sa=57.5, ra=34.25)
    _evaluate(a, "eval_dense_std", of="dense_std", which="best", epoch=2, sa=1.0, ra=1.0)
    table = double_win_table([a])["tables"][0]
    (t50,) = table["rows"]
    assert (t50["adv_sa"], t50["adv_ra"], t50["std_sa"]) == (57.5, 34.25, 61)
    assert table["dense"]["std_sa"] == 60  # history: epoch 1 of dense_std
    assert table["measured"] == ["1 stage: evaluate stages, pgd20, test n = 1000",
                                 "3 stages: per-epoch history, test n not recorded"]
    assert "Measured by: 1 stage: evaluate stages, pgd20, test n = 1000; 3 stages: per-epoch history" \
        in format_double_win(double_win_table([a]))
