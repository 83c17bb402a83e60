"""`pipeline report`: markdown + PNG plots from a real tiny run, and from a hand-built sparse run folder
(masks, a rewire update log, an early-bird curve, several attacks, corruptions) for the sparse plots."""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.engine import store
from exports.runtime_record import RuntimeRecord
from pipeline.metrics.flops import FlopsRecord, InferenceFlops, TrainingFlops
from pipeline.reporting.report import write_report
from pipeline.reporting.sections.sparsity import early_bird_series, update_series
from pipeline.sparsity.masks import MaskSet
from pipeline.sparsity.record import SparsityRecord

from tests.conftest import run_cli, tiny_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def referenced_pngs(report: Path) -> list[Path]:
    names = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report.read_text())
    return [report.parent / n for n in names]


def check_plots(report: Path) -> list[Path]:
    pngs = referenced_pngs(report)
    assert pngs, "the report shows no plots"
    for p in pngs:
        assert p.exists(), f"{p} is referenced but missing"
        w, h = png_size(p)
        assert w >= 400 and h >= 200 and p.stat().st_size > 8000, f"{p}: {w}x{h}, {p.stat().st_size} bytes"
    on_disk = sorted((report.parent / "plots").glob("*.png"))
    assert sorted(pngs) == on_disk, "every plot written is referenced, and only those"
    return pngs


# ------------------------------------------------------------------------------------- a real tiny run


def sparse_config() -> dict:
    """early_bird -> finetune (keeps the ticket) and, beside them, rewire (Flying Bird+) from scratch;
    evaluate / export / runtime_check on the finetuned ticket."""
    cfg = tiny_config()
    warm, ft, ev, export, runtime = cfg["stages"]
    train = {k: v for k, v in warm.items() if k not in ("name", "type", "mode")}
    eb = {"name": "eb", "type": "early_bird", **train, "mode": "clean", "epochs": 3, "density": 0.3, "window": 2,
          "threshold": 0.5, "schedule": {"kind": "multistep", "milestones": [1], "gamma": 0.1}}
    full_val = {k: v for k, v in train["eval"].items() if k != "val_limit"}  # FB+ reads its signals on all of val
    fbp = {"name": "fbp", "type": "rewire", "method": "flying_bird_plus", "density": 0.3, **train, "epochs": 3,
           "eval": full_val, "precision": "bf16", "channels_last": True,
           "sparsity": {"update_every": 4, "second_update_every": 4, "adaptive": {"start_epoch": 1, "window": 1}}}
    ev = {**ev, "input": "finetune",
          "corruptions": {"generate": True, "types": ["gaussian_noise", "contrast"], "severities": [1, 3, 5], "limit": 32},
          "security_curve": {"eps": [0, "4/255", "8/255"], "steps": 3}}
    cfg["stages"] = [eb, {**ft, "input": "eb"}, fbp, ev, export, runtime]
    return cfg


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sparse")
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(sparse_config(), sort_keys=False))
    run_cli("run", str(path), "--run-dir", str(tmp / "run"), "-q", check=True)
    return tmp / "run"


def rec(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "stage.json").read_text())


def test_report_of_a_real_sparse_run_through_the_cli(real_run):
    # headless: an interactive backend named in the environment and no display change nothing
    proc = run_cli("report", str(real_run), env={"MPLBACKEND": "TkAgg", "DISPLAY": ""}, check=True)
    report = real_run / "report.md"
    assert proc.stdout.strip() == str(report)
    text = report.read_text()
    pngs = {p.name for p in check_plots(report)}
    assert pngs == {"eb_accuracy.png", "finetune_accuracy.png", "fbp_accuracy.png", "eb_density.png",
                    "fbp_density.png", "eb_early_bird.png", "fbp_updates.png", "flops.png",
                    "runtime_check_latency.png", "evaluate_corruption.png", "runtime_check_deployment.png",
                    "evaluate_security_curve.png"}
    assert "dense baseline = fresh small_cnn of the same shapes" in text  # no dense_warmup stage in this run
    for stage in ("eb", "finetune", "fbp", "evaluate", "export", "runtime_check"):
        assert f"| `{stage}` |" in text
    assert "`finetune` keeps the masks of `eb` unchanged." in text
    ev = rec(real_run, "evaluate")["metrics"]
    assert f"| test | {ev['test_n']} | {ev['test_sa']:.2f} | {ev['test_ra']:.2f} |" in text
    corr = ev["corruption"]
    accs = corr["per"]["contrast"]
    assert f"| contrast | {accs[0]:.1f} | {accs[1]:.1f} | {accs[2]:.1f} | {sum(accs) / 3:.1f} |" in text
    assert "| corruption | severity 1 | severity 3 | severity 5 | mean |" in text
    assert f"mean over all corruptions and severities evaluated {corr['mean_acc']:.2f} %" in text
    # 2 of the 15 standard types, 3 of 5 severities, generated: every marker, each explained once
    standard = (sum(corr["per"]["gaussian_noise"]) + sum(accs)) / 6
    assert f"15-type mean (RobustBench) {standard:.2f}*†‡ % (2 of 15 types)" in text and "19-type mean" not in text
    assert "* generated from the test split, not the published CIFAR-10-C images." in text
    assert "‡ fewer than the 5 severities" in text and "† fewer corruption types than the column names" in text
    # the security curve: at eps 0 the clean accuracy of the same test images, so exactly the stage's SA
    curve = ev["security_curve"]
    assert [p["eps"] for p in curve["points"]] == [0.0, 4 / 255, 8 / 255] and curve["n"] == ev["test_n"]
    assert curve["points"][0]["pgd"] == ev["test_sa"]
    assert curve["rule"] == "step = 2.5 * eps / 3" and curve["points"][2]["step"] == pytest.approx(2.5 * 8 / 255 / 3)
    pts = " | ".join(f"{p['pgd']:.2f}" for p in curve["points"])
    assert f"| evaluate | PGD-3 (step = 2.5 * eps / 3) | {pts} | {ev['test_n']} | test |" in text
    assert "| run | attack | ε 0/255 | ε 4/255 | ε 8/255 | n | split |" in text
    eb = rec(real_run, "eb")
    assert f"the early bird was drawn at epoch {eb['early_bird']['epoch']}" in text
    assert f"overall density {eb['sparsity']['density']:.4f}" in text
    # the update log's totals agree with the rewire stage's own record
    fb = rec(real_run, "fbp")
    n_updates = len((real_run / "fbp" / "updates.jsonl").read_text().splitlines())
    assert n_updates == fb["sparsity"]["events"] > 0
    changed = fb["sparsity"]["connections_changed"]
    assert f"From `updates.jsonl` ({n_updates} updates); {changed:,} connections changed in all" in text
    assert f"{fb['sparsity']['ever_active']:.2%} of the prunable weights were active" in text
    assert "## Resolved config" in text and "type: rewire" in text
    assert "PGD-3, eps 8/255, step 2/255" in text
    # each training stage's resolved numerics: in its stage.json and in the report
    assert (rec(real_run, "eb")["config"]["precision"], fb["config"]["precision"]) == ("fp32", "bf16")
    assert text.count("Trained in fp32.") == 2  # eb and finetune
    assert "Trained under bf16 autocast (forward, backward and training attack; evaluation in fp32), channels_last." in text


def test_report_is_repeatable_and_out_elsewhere(real_run, tmp_path):
    first = write_report(real_run, tmp_path / "a" / "r.md")
    again = write_report(real_run, tmp_path / "b" / "r.md")
    assert first.read_text() == again.read_text()
    for png in (tmp_path / "a" / "plots").glob("*.png"):
        assert png.read_bytes() == (tmp_path / "b" / "plots" / png.name).read_bytes(), png.name
    check_plots(first)


# ------------------------------------------------------------------------------ a hand-built sparse run


def _stage(run: Path, name: str, stype: str, *, input: str | None = None, model_from: str | None = None,
           metrics: dict | None = None, files: dict[str, bytes | dict] | None = None, config: dict | None = None,
           **sections) -> None:
    sdir = run / name
    sdir.mkdir(parents=True)
    shas = {}
    for fname, content in (files or {}).items():
        if isinstance(content, dict):
            shas[fname] = store.save_tensors(sdir / fname, content)
        else:
            shas[fname] = store.atomic_write_bytes(sdir / fname, content)
    record = {"name": name, "type": stype, "status": "done",
              "config": config or {"name": name, "type": stype, "input": input}, "input": input, "model": CARD, "model_from": model_from, "metrics": metrics or {}, **sections,
              "files": shas, "timings": {"seconds": 1.5}}
    store.atomic_write_json(sdir / "stage.json", record)


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def history_rows(n: int, best: int) -> list[dict]:
    rows = []
    for e in range(1, n + 1):
        ra = 40 + 3 * min(e, best) - 1.5 * max(0, e - best)  # peaks at `best`, then overfits
        rows.append({"epoch": e, "lr": 0.1 if e <= best else 0.01, "train_loss": 2.0 - 0.1 * e, "train_acc": 30.0 + 5 * e,
                     "val_sa": 60.0 + e, "val_ra": ra + 1, "test_sa": 58.0 + e, "test_ra": ra})
    return rows


CARD = {"arch": "small_cnn", "num_classes": 10, "in_chans": 1, "input_size": [8, 8], "mean": [0.3], "std": [0.4],
        "class_names": [str(i) for i in range(10)], "dataset": "digits"}


def _flops(dense: float, sparse: float, paper: float, corrected: float, images: int) -> dict:
    """A FLOPs record as train() writes it (PGD-10)."""
    return FlopsRecord(inference=InferenceFlops(dense, sparse, sparse / dense),
                       training=TrainingFlops(paper, corrected, images, images // 100, "pgd", 10)).to_json()


def build_sparse_run(run: Path) -> Path:
    """Hand-built: early_bird -> rewire (Flying Bird+ update log) -> evaluate (best and final checkpoints, two
    attacks, corruptions) -> runtime_check (CPU ok, CUDA skipped). Masks fit the real small_cnn."""
    from pipeline.models.card import build_model
    from pipeline.sparsity.masks import prunable_params

    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=g) < 0.3 for n, p in prunable_params(build_model(CARD)).items()}
    config = {"run": {"name": "fb", "seed": 1}, "data": {"dataset": "digits"}, "model": {"arch": "small_cnn"},
              "stages": [{"name": "eb", "type": "early_bird"}, {"name": "fb", "type": "rewire", "input": "eb"},
                         {"name": "evaluate", "type": "evaluate", "input": "fb"},
                         {"name": "runtime_check", "type": "runtime_check", "input": "evaluate"}]}
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    curve = [{"update": i, "epoch": i + 1, "previous": None if i == 0 else 0.3 / (i + 1),
              "window": [] if i < 2 else [0.3 / (i + 1), 0.2 / i], "fired": i == 4} for i in range(5)]
    _stage(run, "eb", "early_bird", metrics={"density": 0.3},
           files={"history.jsonl": _jsonl(history_rows(5, 5)), "masks.safetensors": masks},
           early_bird={"emerged": True, "epoch": 5, "window": 3, "threshold": 0.08, "curve": curve},
           flops=_flops(1.0e6, 3.0e5, 1.5e10, 1.5e10, 1000))
    # the rewire log as stages/rewire.py writes it; Flying Bird+ signals from the 5th update on
    updates = [{"event_index": i + 1, "event": "prune_grow", "step": 10 * (i + 1) - 1, "epoch": i // 2,
                "drop_fraction": 0.5, "dropped": 20, "grown": 20, "changed": 40 - 3 * i, "density": 0.3 - 0.01 * i,
                "ever_active": 0.3 + 0.04 * i, "prune_signal": None if i < 4 else [0.0, 1.0, 1.0, 0.5][i - 4],
                "grow_signal": None if i < 4 else 0.0, "adaptive": i >= 4, "extra_pruned": 7 if i in (5, 6) else 0,
                "extra_grown": 0, "layer_density": {}, "layer_changed": {}} for i in range(8)]
    fb_masks = {n: m.clone() for n, m in masks.items()}
    fb_masks["net.features.3.weight"][0] = ~fb_masks["net.features.3.weight"][0]
    _stage(run, "fb", "rewire", input="eb", metrics={"density": 0.23},
           files={"history.jsonl": _jsonl(history_rows(8, 5)), "masks.safetensors": fb_masks,
                  "updates.jsonl": _jsonl(updates)},
           sparsity=SparsityRecord.of(MaskSet(fb_masks), method="flying_bird_plus", updates_file="updates.jsonl").to_json(),
           config={"name": "fb", "type": "rewire", "input": "eb",
                   "sparsity": {"adaptive": {"prune_threshold": 0.5, "grow_threshold": 0.5}}},
           flops=_flops(1.0e6, 2.3e5, 6.0e10, 4.2e10, 8000))
    corruption = {"source": "generated", "clean_acc": 90.0, "mean_acc": 70.0, "mean_acc_15": 71.0,
                  "per": {"gaussian_noise": [80, 75, 70, 65, 60], "fog": [85, 80, 75, 70, 65]}}
    pgd = {"kind": "pgd", "eps": 8 / 255, "step": 2 / 255, "steps": 20, "random_start": True, "restarts": 1}
    best = {"epoch": 5, "sa": {"test": 66.0}, "ra": {"pgd20": {"train": 60.0, "test": 48.5, "gap": 11.5}},
            "robust_gap": 11.5, "robust_gap_running_train": 20.0}
    final = {"epoch": 8, "sa": {"test": 69.0}, "ra": {"pgd20": {"train": 64.0, "test": 50.0, "gap": 14.0}},
             "robust_gap": 14.0, "robust_gap_running_train": 20.0}
    _stage(run, "evaluate", "evaluate", input="fb", model_from="fb",
           metrics={"checkpoint": "best", "train_ra": 60.0, "test_ra": 48.5, "train_sa": 80.0, "test_sa": 66.0,
                    "test_n": 100, "train_n": 100, "train_loss": 0.6, "test_loss": 0.9, "robust_gap": 11.5, "robust_gap_running_train": 20.0, "attack": pgd,
                    "ra": {"pgd20": {"test": 48.5, "val": 50.0, "train": 60.0, "attack": pgd},
                           "autoattack": {"test": 44.0, "n": {"test": 1000},
                                          "attack": {"kind": "autoattack", "eps": 8 / 255, "version": "standard"}}},
                    "checkpoints": {"best": best, "final": final}, "robust_gap_best": 11.5, "robust_gap_final": 14.0,
                    "robust_overfitting": 4.5, "robust_overfitting_measured": -1.5, "corruption": corruption})
    ok = {"status": "ok", "per_batch": {"1": {"median_ms": 0.5, "p90_ms": 0.7, "p99_ms": 0.9, "throughput_img_s": 2000.0},
                                        "64": {"median_ms": 8.0, "p90_ms": 9.0, "p99_ms": 9.5, "throughput_img_s": 8000.0}},
          "environment": {"cpu": "test cpu", "intra_op_threads": 1, "onnxruntime": "1.0"}}
    _stage(run, "runtime_check", "runtime_check", input="evaluate", model_from="fb",
           metrics={"cpu_b1_median_ms": 0.5},
           runtime=RuntimeRecord(model="export/model.onnx", input_shape=[1, 8, 8], intra_op_threads=1,
                                 providers={"cpu": ok, "cuda": {"status": "skipped", "reason": "no GPU"}}).to_json())
    return run


def test_report_of_a_hand_built_run_shows_attacks_checkpoints_corruptions_and_fbp_signals(tmp_path):
    run = build_sparse_run(tmp_path / "run")
    report = write_report(run)
    text = report.read_text()
    names = {p.name for p in check_plots(report)}
    assert names == {"eb_accuracy.png", "fb_accuracy.png", "eb_density.png", "fb_density.png", "fb_updates.png",
                     "eb_early_bird.png", "evaluate_corruption.png", "flops.png", "runtime_check_latency.png"}
    assert "the early bird was drawn at epoch 5" in text and "threshold 0.08" in text
    assert "Best val RA at epoch 5: test RA 55.00 (final 50.50, robust overfitting 4.50 pp)" in text
    assert "| autoattack | 44.00 | — | — | test 1,000 |" in text and "| pgd20 | 48.50 | 50.00 | 60.00 |" in text
    assert "| best | 5 | 66.00 | 48.50 | 60.00 | 11.50 | 20.00 |" in text
    assert "| final | 8 | 69.00 | 50.00 | 64.00 | 14.00 | 20.00 |" in text
    assert "robust overfitting measured here: test RA of the best checkpoint − of the final one: -1.50 pp" in text
    assert "| gaussian noise | 80.0 | 75.0 | 70.0 | 65.0 | 60.0 | 70.0 |" in text
    assert "| Corruption mean (15) | 72.50*† |" in text and "Corruption mean (19)" not in text  # 2 standard types
    assert "| cuda | skipped |" in text
    assert "From `updates.jsonl` (8 updates); 236 connections changed in all" in text  # 40 + 37 + ... + 19
    assert "2 update(s) pruned or grew extra on the Flying Bird+ signals" in text
    masks = store.load_tensors(run / "fb" / "masks.safetensors")
    per_layer, overall = MaskSet(masks).layer_densities(), MaskSet(masks).density()
    kept = sum(int(m.sum()) for m in masks.values())
    assert overall == kept / sum(m.numel() for m in masks.values())
    assert f"overall density {overall:.4f}" in text
    assert per_layer["net.fc.weight"] == pytest.approx(masks["net.fc.weight"].float().mean().item())


def test_a_damaged_file_costs_only_its_section(tmp_path):
    run = build_sparse_run(tmp_path / "run")
    (run / "fb" / "updates.jsonl").write_text('{"step": 1}\n')  # sha256 no longer matches stage.json
    text = write_report(run).read_text()
    assert "could not be made" in text and "updates.jsonl" in text
    assert "## Robustness evaluation" in text and "## FLOPs" in text


def test_series_readers_hand_checked():
    s = update_series([{"step": 5, "changed": 6, "density": 0.3125, "ever_active": 0.4, "prune_signal": 0.5,
                        "grow_signal": None, "extra_pruned": 3, "extra_grown": 0},
                       {"step": 9, "changed": 4, "density": 0.3, "ever_active": 0.45, "prune_signal": None,
                        "grow_signal": None, "extra_pruned": 0, "extra_grown": 0}])
    assert s["x"] == [5, 9] and s["changed"] == [6, 4] and s["density"] == [0.3125, 0.3]
    assert s["prune"] == [0.5, None] and s["adaptive"] == [True, False]
    by_epoch = update_series([{"epoch": 2, "density": 0.5}], x_key="epoch")
    assert by_epoch["x"] == [2] and by_epoch["changed"] == [None]
    eb = early_bird_series({"early_bird": {"threshold": 0.1, "epoch": None, "curve": [
        {"epoch": 1, "previous": None, "window": [], "fired": False},
        {"epoch": 2, "previous": 0.2, "window": [0.2, 0.3], "fired": False}]}})
    assert eb["previous"] == [None, 0.2] and eb["window"] == [None, 0.3] and eb["fired_epoch"] is None


def test_not_a_run_directory_is_a_clear_error(tmp_path):
    proc = run_cli("report", str(tmp_path))
    assert proc.returncode != 0 and "not a run directory" in proc.stderr


def test_security_curve_table_with_autoattack_rows():
    from pipeline.metrics.curve_config import CurvePoint, SecurityCurve
    from pipeline.reporting.curves import curve_table

    attack = {"kind": "pgd", "steps": 10, "step_factor": 2.5, "restarts": 1, "random_start": True}
    ran = SecurityCurve(split="test", n=500, attack=attack, rule="step = 2.5 * eps / 10",
                        points=[CurvePoint(0.0, 90.0, 0.0, 90.0, 100), CurvePoint(8 / 255, 40.0, 0.00784, 35.5, 100)],
                        autoattack={"version": "standard", "n": 100, "backend": "autoattack"})
    skipped = SecurityCurve(split="test", n=500, attack=attack, rule="step = 2.5 * eps / 10",
                            points=[CurvePoint(0.0, 80.0, 0.0), CurvePoint(4 / 255, 50.0, 0.00392)],
                            autoattack={"version": "standard", "skipped": "not installed"})
    lines = curve_table({"a": ran, "b": skipped}).splitlines()
    assert lines[0] == "| run | attack | ε 0/255 | ε 4/255 | ε 8/255 | n | split |"
    assert lines[2:] == ["| a | PGD-10 (step = 2.5 * eps / 10) | 90.00 | — | 40.00 | 500 | test |",
                         "| a | AutoAttack standard | 90.00 | — | 35.50 | 100 | test |",
                         "| b | PGD-10 (step = 2.5 * eps / 10) | 80.00 | 50.00 | — | 500 | test |",
                         "| b | AutoAttack standard: skipped (not installed) | — | — | — | — | test |"]
