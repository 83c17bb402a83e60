"""`pipeline compare`: the headline-table layout over two real tiny runs and a hand-built sparse run;
every number is the one its stage.json records (one FLOPs figure is also worked out by hand)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.engine import store
from pipeline.reporting.compare import compare_runs
from pipeline.engine.errors import PipelineError
from pipeline.metrics.flops import count_macs
from pipeline.models.card import build_model

from tests.conftest import run_cli, tiny_config
from tests.reporting.test_report import CARD, build_sparse_run

HEADLINE = ["RA best", "RA final", "RA diff", "SA best", "SA final", "SA diff"]


def record(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "stage.json").read_text())


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("cmp")
    runs = []
    for seed in (3, 4):
        cfg = tiny_config()
        cfg["run"]["seed"] = seed
        if seed == 4:  # no export / runtime_check: its latency cell stays empty
            cfg["stages"] = cfg["stages"][:3]
        # security curves at different budgets: compare's table takes the union of the eps
        cfg["stages"][2]["security_curve"] = {"eps": [0, "4/255", "8/255"] if seed == 3 else [0, "2/255", "8/255"],
                                              "steps": 3}
        path = tmp / f"cfg{seed}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        run_cli("run", str(path), "--run-dir", str(tmp / f"seed{seed}"), "-q", check=True)
        runs.append(tmp / f"seed{seed}")
    return runs


def test_two_tiny_runs_side_by_side_through_the_cli(two_runs, tmp_path):
    out = tmp_path / "table.md"
    proc = run_cli("compare", *map(str, two_runs), "--out", str(out), check=True)
    header = proc.stdout.splitlines()[0]
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[:7] == ["run", *HEADLINE]
    assert cols[7].startswith("Train FLOPs paper (×10") and cols[8].startswith("Train FLOPs corrected (×10")
    assert cols[9].startswith("Inf FLOPs (×10") and cols[10] == "Gap"
    assert "CPU b1 median (ms)" in cols and "Density" not in cols  # both runs are dense
    # both runs are named "tiny": their folders tell them apart
    body = [line for line in proc.stdout.splitlines()[2:4]]
    assert body[0].startswith("| tiny (seed3) |") and body[1].startswith("| tiny (seed4) |")
    assert out.read_text() == proc.stdout.rstrip("\n") + "\n"
    data = json.loads(out.with_suffix(".json").read_text())
    with out.with_suffix(".csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["tiny (seed3)", "tiny (seed4)"]
    assert float(rows[0]["ra_best"]) == data["rows"][0]["ra_best"]

    for row, run in zip(data["rows"], two_runs):
        ft, ev, wu = record(run, "finetune"), record(run, "evaluate"), record(run, "warmup")
        assert row["final_stage"] == "finetune" and row["evaluate_stage"] == "evaluate"
        assert row["training_stages"] == ["warmup", "finetune"]
        for key in ("RA_best", "RA_final", "RA_diff", "SA_best", "SA_final", "SA_diff"):
            assert row[key.lower()] == ft["metrics"][key]
        assert row["ra_best"] == ev["metrics"]["history_RA_best"]
        m = ev["metrics"]
        if "robust_gap_final" in m:  # the final checkpoint was kept and judged: the paper's gap
            assert row["robust_gap"] == m["robust_gap_final"] and row["gap_checkpoint"] == "final"
        else:
            assert row["robust_gap"] == m["robust_gap"] == m["train_ra"] - m["test_ra"]
        assert row["train_flops_paper"] == wu["flops"]["training"]["paper"] + ft["flops"]["training"]["paper"]
        assert row["train_flops_corrected"] == wu["flops"]["training"]["corrected"] + ft["flops"]["training"]["corrected"]
        assert row["inference_flops"] == ft["flops"]["inference"]["sparse_flops"]
    assert data["rows"][0]["cpu_b1_median_ms"] == record(two_runs[0], "runtime_check")["metrics"]["cpu_b1_median_ms"]
    assert data["rows"][1]["cpu_b1_median_ms"] is None and body[1].endswith("| — |")

    # by hand: PGD-3 training, dense model -> paper = (3 + 1) x 3 x F x images, corrected = (3 + 2 x 3) x F x images
    wu = record(two_runs[0], "warmup")["flops"]
    f, images = wu["inference"]["dense_flops"], wu["training"]["images"]
    assert images == 2 * 6 * 64  # 2 epochs x 6 capped steps x batch 64
    assert wu["training"]["paper"] == pytest.approx(12 * f * images)
    assert wu["training"]["corrected"] == pytest.approx(9 * f * images)
    # the security curves: one figure of both runs beside the table, a row per run listing every eps
    figure = out.with_name("table_security_curves.png")
    assert figure.stat().st_size > 8000 and f"![security curves]({figure.name})" in proc.stdout
    assert "| run | attack | ε 0/255 | ε 2/255 | ε 4/255 | ε 8/255 | n | split |" in proc.stdout
    for row, run in zip(data["rows"], two_runs):
        curve = record(run, "evaluate")["metrics"]["security_curve"]
        by_eps = {round(p["eps"] * 255): f"{p['pgd']:.2f}" for p in curve["points"]}
        cells = " | ".join(by_eps.get(k, "—") for k in (0, 2, 4, 8))
        assert f"| {row['label']} | PGD-3 (step = 2.5 * eps / 3) | {cells} | 64 | test |" in proc.stdout
        assert data["security_curves"][row["label"]] == curve
    assert "RA n (test images): tiny (seed3): RA best/final 64, evaluate stage 64" in proc.stdout
    first = data["rows"][0]
    shown = [c.strip() for c in proc.stdout.splitlines()[2].strip("|").split("|")]
    assert shown[1] == f"{first['ra_best']:.2f}" and shown[10] == f"{first['robust_gap']:.2f}"


def test_sparse_run_beside_a_dense_one_adds_density_attacks_and_corruption(two_runs, tmp_path):
    sparse = build_sparse_run(tmp_path / "fb")
    text, data = compare_runs([two_runs[0], sparse], labels=["dense", "Flying Bird"])
    titles = [c["title"] for c in data["columns"]]
    assert titles[:10] == [*HEADLINE, "Train FLOPs paper", "Train FLOPs corrected", "Inf FLOPs", "Gap"]
    assert {"Density", "Corruption mean (15)", "RA autoattack", "Gap (running)"} <= set(titles)
    assert "Corruption mean (19)" not in titles  # only 2 standard types were evaluated
    assert "RA pgd20" not in titles  # the first attack is the one behind RA best/final and the gap already
    dense, fb = data["rows"]
    assert dense["density"] == 1.0 and dense["corruption_mean_15"] is None and dense["ra_autoattack"] is None
    assert fb["final_stage"] == "fb" and fb["training_stages"] == ["eb", "fb"]
    assert fb["train_flops_paper"] == pytest.approx(1.5e10 + 6.0e10)  # early-bird search + rewiring
    assert fb["train_flops_corrected"] == pytest.approx(1.5e10 + 4.2e10)
    # inference FLOPs of the weights kept: counted from the rewired masks, not the stage's end-of-training record
    masks = store.load_tensors(sparse / "fb" / "masks.safetensors")
    layers = count_macs(build_model(CARD), (1, 8, 8))
    expected = 2 * sum(layer.macs * masks[layer.param].float().mean().item() for layer in layers)
    assert fb["inference_flops"] == pytest.approx(expected) and fb["inference_flops"] != 2.3e5
    assert fb["inference_flops_dense"] == 2 * sum(layer.macs for layer in layers)
    # gap at the final checkpoint (as the paper), with the running-train variant of the same checkpoint
    assert fb["robust_gap"] == 14.0 and fb["gap_checkpoint"] == "final" and fb["robust_gap_running_train"] == 20.0
    assert fb["corruption_mean_acc"] == 70.0 and fb["corruption_mean_15"] == 72.5  # (70 + 75) / 2 from `per`
    assert fb["ra_autoattack"] == 44.0 and fb["best_epoch"] == 5
    assert "| 44.00 (n = 1,000) |" in text  # every RA figure states the images it was measured on
    assert fb["ra_best"] == 55.0 and fb["ra_final"] == 50.5 and fb["ra_diff"] == pytest.approx(4.5)
    gap_dense = dense["robust_gap"]
    arrow = "↓" if 14.0 < gap_dense else "↑"
    assert f"| 14.00 ({arrow}{abs(14.0 - gap_dense):.2f}) |" in text  # change against the first run, as the paper
    assert "Corruption sets: Flying Bird: generated corruptions, 2 of 15 standard types" in text
    assert "| 72.50*† |" in text and "- † fewer corruption types than the column names" in text
    assert "| dense |" in text and "| Flying Bird |" in text


def test_final_model_without_an_evaluate_stage_and_unfinished_runs(tmp_path):
    run = build_sparse_run(tmp_path / "fb")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["stages"] = [s for s in cfg["stages"] if s["name"] != "evaluate"]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.rmtree(run / "evaluate")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text(yaml.safe_dump({"run": {"name": "empty"}, "stages": [{"name": "w", "type": "dense_warmup"}]}))
    text, data = compare_runs([run, empty])
    fb, nothing = data["rows"]
    assert fb["final_stage"] == "fb" and fb["evaluate_stage"] is None and fb["robust_gap"] is None
    assert fb["density"] is not None and fb["cpu_b1_median_ms"] == 0.5
    assert fb["ra_best"] == 55.0
    assert nothing["final_stage"] is None and nothing["ra_best"] is None
    assert "empty (`" in text and "no stage has produced a model yet" in text
    with pytest.raises(PipelineError, match="one per run"):
        compare_runs([run, empty], labels=["only one"])
    with pytest.raises(PipelineError, match="not a run directory"):
        compare_runs([tmp_path])


def test_15_and_19_type_columns_on_hand_made_records(tmp_path):
    """A published 19-type record (15 standard at 60 %, 4 extra at 80 %) beside a generated 3-type one at 2
    severities: two labelled columns, known means, and the second run's cells marked."""
    from pipeline.corruptions.catalog import ALL, STANDARD

    def with_corruption(name: str, corruption: dict) -> Path:
        run = build_sparse_run(tmp_path / name)
        path = run / "evaluate" / "stage.json"
        rec = json.loads(path.read_text())
        rec["metrics"]["corruption"] = corruption
        store.atomic_write_json(path, rec)
        return run

    published = {"source": "published", "severities": [1, 2, 3, 4, 5], "n": 10000, "mean_acc": 64.0,
                 "per": {t: [60.0 if t in STANDARD else 80.0] * 5 for t in ALL}}
    few = {"gaussian_noise": 50.0, "fog": 70.0, "spatter": 90.0}
    generated = {"source": "generated", "backend": "builtin", "severities": [1, 3], "n": 200, "mean_acc": 70.0,
                 "per": {t: [a, a] for t, a in few.items()}}
    text, data = compare_runs([with_corruption("pub", published), with_corruption("gen", generated)],
                              labels=["published", "generated"])
    header = [c.strip() for c in text.splitlines()[0].strip("|").split("|")]
    i15, i19 = header.index("Corruption mean (15)"), header.index("Corruption mean (19)")
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()[2:4]]
    assert (cells[0][i15], cells[0][i19]) == ("60.00", "64.21")  # (15 * 60 + 4 * 80) / 19
    assert (cells[1][i15], cells[1][i19]) == ("60.00*†‡", "70.00*†‡")  # (50 + 70) / 2; (50 + 70 + 90) / 3
    pub, gen = data["rows"]
    assert pub["corruption_mean_15"] == 60.0 and pub["corruption_mean_19"] == pytest.approx(1220 / 19)
    assert gen["corruption_mean_15"] == 60.0 and gen["corruption_mean_19"] == pytest.approx(70.0)
    assert "generated and published sets are not comparable" in text
    for line in ("- * generated from the test split, not the published CIFAR-10-C images.",
                 "- † fewer corruption types than the column names (mean over the types evaluated).",
                 "- ‡ fewer than the 5 severities (mean over the severities evaluated)."):
        assert line in text
    assert ("published: published corruptions, 15 of 15 standard types + 4 of 4 extra, severities 1, 2, 3, 4, 5, "
            "n = 10000 images per type × severity") in text


def test_clean_stage_after_a_robust_one_reports_its_own_curve_not_the_robust_one(tmp_path):
    """A clean fine-tune (per-epoch test SA only) below a PGD-AT stage: RA best/final stay empty instead
    of borrowing the robust stage's curve, and SA best/final are the clean stage's own."""
    from tests.reporting.test_report import _jsonl, history_rows

    run = build_sparse_run(tmp_path / "clean_ft")
    clean = [{k: v for k, v in row.items() if k not in ("val_ra", "test_ra")} for row in history_rows(8, 5)]
    clean[2]["val_sa"] = 99.0  # the best val SA: epoch 3
    path = run / "fb" / "stage.json"
    rec = json.loads(path.read_text())
    rec["files"]["history.jsonl"] = store.atomic_write_bytes(run / "fb" / "history.jsonl", _jsonl(clean))
    store.atomic_write_json(path, rec)
    from pipeline.engine.rundir import RunDir
    from pipeline.reporting.summary import summarize_run

    full = summarize_run(RunDir(run))
    assert full["best_selected_on"] == "val_sa" and full["history_attack"] is None
    text, data = compare_runs([run])
    (row,) = data["rows"]
    assert row["history_stage"] == "fb" and row["best_epoch"] == 3
    assert (row["ra_best"], row["ra_final"], row["ra_diff"]) == (None, None, None)
    assert (row["sa_best"], row["sa_final"]) == (61.0, 66.0)  # test SA 58 + epoch, at epochs 3 and 8
    assert "selected on val SA: clean training logged no RA" in text
