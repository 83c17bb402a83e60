"""The quickstart as a user runs it: every stage, an ONNX model and its runtime figures."""
from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from .conftest import REPO, run_cli, tiny_config


@pytest.mark.slow
def test_all_stages_end_to_end(write_config, tmp_path):
    path = write_config(tiny_config())
    run_dir = tmp_path / "run"
    proc = run_cli("run", str(path), "--run-dir", str(run_dir), check=True)
    assert str(run_dir / "export" / "model.onnx") in proc.stderr
    assert "cpu: batch 1 median" in proc.stderr

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
    assert "warmup -> early_bird -> finetune -> evaluate -> export -> runtime_check" in proc.stdout
