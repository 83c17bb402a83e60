"""The quickstart as a user runs it: every stage, an ONNX model and its runtime figures."""
from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from tests.conftest import REPO, run_cli, tiny_config


@pytest.mark.slow
def test_all_stages_end_to_end(write_config, tmp_path):
    path = write_config(tiny_config())
    run_dir = tmp_path / "run"
    proc = run_cli("run", str(path), "--run-dir", str(run_dir), check=True)
    assert str(run_dir / "export" / "model.onnx") in proc.stdout  # the summary is the command's output
    assert "cpu: batch 1 median" in proc.stdout

    ev = json.loads((run_dir / "evaluate" / "stage.json").read_text())["metrics"]
    for key in ("train_ra", "test_sa", "test_ra", "robust_gap", "robust_overfitting"):
        assert key in ev
    assert ev["robust_gap"] == pytest.approx(ev["train_ra"] - ev["test_ra"])
    assert ev["attack"]["steps"] == 3

    exp = json.loads((run_dir / "export" / "stage.json").read_text())
    assert exp["metrics"]["parity_max_abs_diff"] <= 1e-4
    sess = ort.InferenceSession(str(run_dir / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"])[:3] == ["0", "1", "2"]
    assert "test_ra" in meta

    rt = json.loads((run_dir / "runtime_check" / "runtime.json").read_text())
    cpu = rt["providers"]["cpu"]
    assert cpu["status"] == "ok" and cpu["per_batch"]["1"]["runs"] == 100
    assert cpu["per_batch"]["1"]["p90_ms"] >= cpu["per_batch"]["1"]["median_ms"] > 0


def test_root_pipeline_yaml_is_valid():
    proc = run_cli("validate", str(REPO / "pipeline.yaml"), check=True)
    assert "warmup -> early_bird -> channel_prune -> finetune -> evaluate -> export -> runtime_check" in proc.stdout


@pytest.mark.slow
def test_root_pipeline_runs_and_resumes_after_sigkill_bit_identically(tmp_path):
    """The real quickstart (pipeline.yaml), killed mid-warmup and resumed, ends with the same files."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_cli("run", str(REPO / "pipeline.yaml"), "--run-dir", str(ref), "-q", check=True)
    killed = run_cli("run", str(REPO / "pipeline.yaml"), "--run-dir", str(cut), "-q",
                     env={"PIPELINE_FAULT_AFTER_STEPS": "50"})
    assert killed.returncode == -9
    run_cli("run", str(REPO / "pipeline.yaml"), "--run-dir", str(cut), "-q", check=True)
    for name in ("warmup/model.safetensors", "early_bird/model.safetensors", "early_bird/masks.safetensors",
                 "channel_prune/structure.json", "finetune/model.safetensors", "finetune/masks.safetensors",
                 "export/model.onnx", "export/model.structured.onnx"):
        assert (cut / name).read_bytes() == (ref / name).read_bytes(), name

    eb = json.loads((ref / "early_bird" / "stage.json").read_text())
    assert eb["early_bird"]["emerged"] and eb["metrics"]["density"] == pytest.approx(0.5, abs=1e-3)
    from safetensors.torch import load_file

    weights, masks = load_file(ref / "finetune" / "model.safetensors"), load_file(ref / "finetune" / "masks.safetensors")
    assert all(int(weights[k][~m].count_nonzero()) == 0 for k, m in masks.items())
    # the channel cut keeps the ticket's mask (sliced): still about half of the remaining weights are zero
    assert 0.3 < json.loads((ref / "export" / "stage.json").read_text())["metrics"]["sparsity"] < 0.7
    prune = json.loads((ref / "channel_prune" / "stage.json").read_text())["metrics"]
    assert prune["macs_ratio"] == pytest.approx(0.25, rel=0.05)  # widths in multiples of 8, tolerance 0.05
    rows = {r["variant"]: r for r in json.loads((ref / "runtime_check" / "runtime.json").read_text())["comparison"]["rows"]}
    assert rows["structured"]["macs_cut"] > 1.9 and rows["structured"]["bytes"] < rows["dense"]["bytes"]
    assert list((ref / "tensorboard" / "warmup").glob("events.out.tfevents.*"))


def test_export_that_fails_parity_keeps_no_model(write_config, tmp_path):
    cfg = tiny_config(export={"parity_tol": 1e-12})
    cfg["stages"] = [cfg["stages"][0], cfg["stages"][3]]
    cfg["stages"][0]["epochs"] = 1
    run_dir = tmp_path / "run"
    proc = run_cli("run", str(write_config(cfg)), "--run-dir", str(run_dir), "-q")
    assert proc.returncode == 5 and "ONNX parity failed" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run_dir / "export" / "model.onnx").exists() and not (run_dir / "export" / "stage.json").exists()
    assert (run_dir / "warmup" / "stage.json").exists()  # the finished stage survives the later failure


@pytest.mark.skipif("cuda" in __import__("exports.ort_runtime", fromlist=["x"]).available_providers(),
                    reason="needs an onnxruntime without the CUDA provider")
def test_runtime_check_missing_provider_skip_or_error(write_config, tmp_path):
    cfg = tiny_config(runtime_check={"providers": ["cpu", "cuda"]})
    cfg["stages"] = [cfg["stages"][0], cfg["stages"][3], cfg["stages"][4]]
    cfg["stages"][0]["epochs"] = 1
    run_dir = tmp_path / "run"
    run_cli("run", str(write_config(cfg)), "--run-dir", str(run_dir), "-q", check=True)
    rt = json.loads((run_dir / "runtime_check" / "runtime.json").read_text())
    assert rt["providers"]["cuda"]["status"] == "skipped" and rt["providers"]["cpu"]["status"] == "ok"
    proc = run_cli("run", str(write_config(cfg)), "--run-dir", str(run_dir), "-q",
                   "--set", "stages.runtime_check.on_missing=error")
    assert proc.returncode == 1 and "provider 'cuda' is not available" in proc.stderr
