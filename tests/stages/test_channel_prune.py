"""channel_prune: MACs targets, residual groups, the stage end to end, resume after SIGKILL, export
variants, the dense-baseline runtime comparison, budgets, and predict on a shrunk model."""
from __future__ import annotations

import json
import math
import signal

import pytest
import torch

from pipeline.engine import store
from pipeline.engine.rundir import StageRecord
from pipeline.metrics.flops import count_macs
from pipeline.models import create_model
from pipeline.models.channel_plan import adversarial_gradients, plan_groups, prune_to_target
from pipeline.models.structure import dependency_graph
from tests.conftest import run_cli

SHAPE = (3, 16, 16)


def macs(model) -> int:
    return sum(lm.macs for lm in count_macs(model, SHAPE))


@pytest.mark.parametrize("scope,importance,ratio", [("global", "l2", 0.25), ("per_layer", "l1", 0.5),
                                                     ("global", "bn_scale", 0.5), ("global", "taylor", 0.4)])
def test_prune_to_target_hits_macs_within_2_percent_and_keeps_residual_groups_whole(scope, importance, ratio):
    torch.manual_seed(0)
    model = create_model("preact_resnet18", num_classes=10, in_chans=3).eval()
    dense = macs(model)
    graph = dependency_graph(model, SHAPE)
    sizes = {g.name: g.size for g in plan_groups(model, graph)}
    if importance == "taylor":
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(8, *SHAPE, generator=g), torch.randint(0, 10, (8,), generator=g)
        attack = lambda m, xb, yb, gen: xb.clamp(0, 1)  # noqa: E731 - the attack is tested in test_attacks
        adversarial_gradients(model, [(x, y)], attack)
        assert all(p.grad is not None for p in model.parameters() if p.ndim == 4)
    prune_to_target(model, graph, SHAPE, target_macs=int(dense * ratio), scope=scope, importance=importance,
                    min_keep=0.1, original_sizes=sizes)
    assert abs(macs(model) / dense - ratio) <= 0.02 * ratio
    net = model.net
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        # one residual stream per stage: every block writes (and reads) the same channels
        widths = {b.conv2.out_channels for b in stage} | {b.bn1.num_features for b in stage[1:]}
        assert len(widths) == 1
        assert stage[0].shortcut is None or stage[0].shortcut.out_channels in widths
    assert net.bn.num_features == net.layer4[-1].conv2.out_channels == net.fc.in_features
    for name, size in sizes.items():  # the floor: no group below 10% of its channels
        mod = model.get_submodule(name)
        assert mod.out_channels >= math.ceil(0.1 * size)
    with torch.no_grad():
        assert model(torch.rand(2, *SHAPE)).shape == (2, 10)


TRAIN = {"batch_size": 64, "optimizer": {"lr": 0.05}, "schedule": {"kind": "constant"}, "attack": {"steps": 2},
         "eval": {"val_limit": 64, "test_limit": 64, "attack": {"steps": 2}}}


def prune_config(prune_steps: int = 2, **extra_stages) -> dict:
    stages = [
        {"name": "warmup", "type": "dense_warmup", "mode": "clean", "epochs": 1, "max_steps_per_epoch": 1, **TRAIN},
        {"name": "prune", "type": "channel_prune", "macs_ratio": 0.5, "steps": prune_steps, "importance": "taylor",
         "taylor": {"batches": 1, "batch_size": 32, "attack": {"steps": 2}}},
        {"name": "finetune", "type": "finetune", "mode": "pgd", "epochs": 2, "max_steps_per_epoch": 4,
         "progress_every_steps": 2, **TRAIN},
    ]
    return {"run": {"name": "cp", "seed": 4}, "data": {"dataset": "digits"}, "model": {"arch": "small_cnn"},
            "stages": stages + list(extra_stages.values())}


def test_channel_prune_and_finetune_resume_after_sigkill_bit_identically(write_config, tmp_path):
    path = write_config(prune_config(prune_steps=3))
    ref = tmp_path / "ref"
    run_cli("run", str(path), "--run-dir", str(ref), "-q", check=True)
    rec = json.loads((ref / "prune" / "stage.json").read_text())
    assert abs(rec["metrics"]["macs_ratio"] - 0.5) <= 0.01 and len(rec["channel_prune"]["steps"]) == 3
    for stage in ("prune", "finetune"):
        files = json.loads((ref / stage / "stage.json").read_text())["files"]
        assert files["structure.json"] == store.sha256_file(ref / stage / "structure.json")

    files = ("prune/model.safetensors", "prune/structure.json", "finetune/model.safetensors", "finetune/structure.json")
    for fault, stage in (("2", "prune"), ("5", "finetune")):  # warmup has 1 step, prune 3: each dies where meant
        cut = tmp_path / f"cut{fault}"
        killed = run_cli("run", str(path), "--run-dir", str(cut), "-q", env={"PIPELINE_FAULT_AFTER_STEPS": fault})
        assert killed.returncode == -signal.SIGKILL
        assert (cut / stage / "progress" / "manifest.json").exists() and not (cut / stage / "stage.json").exists()
        resumed = run_cli("run", str(path), "--run-dir", str(cut), check=True)
        assert "resuming from saved progress" in resumed.stderr
        for name in files:
            assert (cut / name).read_bytes() == (ref / name).read_bytes(), (fault, name)

    # a structure.json that was altered is refused by its sha256 before anything is replayed
    target = ref / "finetune" / "structure.json"
    target.write_text(target.read_text().replace('"removed": [', '"removed": [0, ', 1))
    with pytest.raises(Exception, match="sha256|structure.json"):
        StageRecord.finished_stage(ref, "finetune").load_model()


def test_shrunk_model_exports_times_against_dense_and_predicts(write_config, tmp_path):
    cfg = prune_config(prune_steps=1,
                       evaluate={"name": "evaluate", "type": "evaluate", "attack": {"steps": 2}, "train_limit": 32,
                                 "val_limit": 32, "test_limit": 32},
                       export={"name": "export", "type": "export", "parity_samples": 32},
                       runtime={"name": "runtime_check", "type": "runtime_check", "providers": ["cpu"],
                                "batch_sizes": [1, 16], "runs": 100, "warmup": 2, "rounds": 2, "intra_op_threads": 1})
    path = write_config(cfg)
    run_dir = tmp_path / "run"
    proc = run_cli("run", str(path), "--run-dir", str(run_dir), check=True)
    assert "compression vs dense" in proc.stdout and "structured" in proc.stdout and "fewer)" in proc.stdout  # the summary

    model, masks, card = StageRecord.finished_stage(run_dir, "finetune").load_model()
    assert model.net.fc.in_features < 64 and masks is None  # the shrunk architecture, rebuilt from data

    exp = json.loads((run_dir / "export" / "stage.json").read_text())
    variants = exp["variants"]
    assert {"masked", "structured"} <= set(variants)
    for name in ("masked", "structured"):
        v = variants[name]
        assert v["parity_max_abs_diff"] <= 1e-4 and v["parity_n"] == 32
        assert v["bytes"] == (run_dir / "export" / v["file"]).stat().st_size and v["macs"] > 0 and v["params"] > 0
    meta = exp["onnx_metadata"]
    assert meta["preprocessing"]["resize"].startswith("bilinear") and meta["test_n"] == 32 and meta["attack"]["steps"] == 2
    import onnx

    proto = onnx.load(str(run_dir / "export" / "model.structured.onnx"))
    assert proto.model_version == 1 and "small_cnn" in proto.doc_string

    rt = json.loads((run_dir / "runtime_check" / "runtime.json").read_text())
    comp = rt["comparison"]
    assert comp["baseline"]["source"].startswith("stage 'warmup'")
    rows = {r["variant"]: r for r in comp["rows"]}
    assert set(rows) == {"dense", "masked", "structured"}
    dense_macs = sum(lm.macs for lm in count_macs(create_model("small_cnn", num_classes=10, in_chans=1), (1, 8, 8)))
    assert rows["dense"]["macs"] == dense_macs  # MACs read from the ONNX graph agree with the torch count
    prune_macs = json.loads((run_dir / "prune" / "stage.json").read_text())["metrics"]["macs"]
    assert rows["structured"]["macs"] == prune_macs
    assert rows["structured"]["macs_cut"] == pytest.approx(dense_macs / prune_macs)
    assert rows["structured"]["bytes"] < rows["dense"]["bytes"]
    for r in rows.values():
        assert r["b1_median_ms"] > 0 and r["throughput_batch"] == 16 and set(r["speedup"]) == {"1", "16"}
        assert r["peak_rss_mb"] is None or r["peak_rss_mb"] >= 0
    assert rows["dense"]["speedup"] == {"1": 1.0, "16": 1.0}
    assert rt["providers"]["cpu"]["status"] == "ok"  # the figures of model.onnx, as before

    run_cli("report", str(run_dir), check=True)
    text = (run_dir / "report.md").read_text()
    assert "## Deployment: compression against the dense baseline" in text
    assert "Unstructured zeros buy no latency in onnxruntime" in text and "| `structured` | cpu |" in text
    assert (run_dir / "plots" / "runtime_check_deployment.png").stat().st_size > 0

    pred = run_cli("predict", str(run_dir / "export" / "model.structured.onnx"), str(_digit_png(tmp_path)), check=True)
    assert pred.stdout.strip()

    failed = run_cli("run", str(path), "--run-dir", str(run_dir), "-q", "--set", "stages.runtime_check.max_file_mb=0.001",
                     "--set", "stages.runtime_check.dense_from=fresh")
    assert failed.returncode == 5 and "Traceback" not in failed.stderr
    assert "max_file_mb=0.001" in failed.stderr and "model.structured.onnx is 0.0" in failed.stderr
    fresh = json.loads((run_dir / "runtime_check" / "runtime.json").read_text())["comparison"]
    assert fresh["baseline"]["source"].startswith("fresh small_cnn of the same shapes")
    assert {r["variant"]: r["macs"] for r in fresh["rows"]}["dense"] == dense_macs


def _digit_png(tmp_path):
    from PIL import Image

    from pipeline.data import DataConfig, load_dataset

    img = load_dataset(DataConfig(dataset="digits")).test_x[0, 0].numpy()
    out = tmp_path / "digit.png"
    Image.fromarray(img).save(out)
    return out
