"""Transfer of a ticket to another dataset through the real CLI: new dense head, kept backbone mask,
dataset B's card and statistics, data-limited balanced subsets, shape errors, and the double-win table."""
from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from pipeline.engine import store
from pipeline.engine.config import load_config
from pipeline.reporting.double_win import double_win_table
from pipeline.engine.errors import CheckpointError, ConfigError
from pipeline.models.transfer import transfer_masks

from tests.conftest import run_cli

B_NAMES = ["alpha", "beta", "gamma", "delta", "epsilon"]
PLUGIN = '''
from pydantic import Field
from pipeline.engine.stage import Stage, StageConfig
from pipeline.sparsity import global_magnitude_masks, prunable_params

class MagPruneConfig(StageConfig):
    density: float = Field(gt=0, le=1)

class MagPrune(Stage):
    """A ticket without the early_bird / imp stages: one global magnitude prune of conv + linear."""
    Config = MagPruneConfig

    def run(self, ctx):
        model, _, card = ctx.load_input_model()
        masks = global_magnitude_masks(prunable_params(model), ctx.config.density)
        masks.apply_(model)
        ctx.save_model(model, card, masks=masks)
'''


def _images(rng: np.random.Generator, labels: np.ndarray, chans: int) -> np.ndarray:
    """Noisy 8x8 images whose brightness tells the class (survives global average pooling)."""
    x = rng.integers(0, 60, size=(len(labels), chans, 8, 8)) + 45 * labels[:, None, None, None]
    return x.clip(0, 255).astype(np.uint8)


def _write_npz(path, chans: int) -> None:
    rng = np.random.default_rng(0)
    ys = {s: rng.permutation(np.repeat(np.arange(5), n)) for s, n in (("train", 40), ("val", 10), ("test", 10))}
    np.savez(path, label_names=np.array(B_NAMES),
             **{f"x_{s}": _images(rng, y, chans) for s, y in ys.items()}, **{f"y_{s}": y for s, y in ys.items()})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two runs on digits: a dense warmup, magnitude tickets (50% in run A, 80% in run B), each
    transferred to a 5-class 1x8x8 dataset under standard and adversarial fine-tuning; run A also
    transfers the dense model and exports the adversarially transferred ticket."""
    root = tmp_path_factory.mktemp("transfer")
    site = root / "site"
    (site / "magprune_stage").mkdir(parents=True)
    (site / "magprune_stage" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "magprune_stage-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: magprune-stage\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pipeline.stages]\ntest_magprune = magprune_stage:MagPrune\n")
    env = {"PYTHONPATH": str(site)}
    npz_b, npz_rgb = root / "b.npz", root / "rgb.npz"
    _write_npz(npz_b, 1)
    _write_npz(npz_rgb, 3)

    evals = {"val_limit": 32, "test_limit": 32, "attack": {"steps": 2}}
    common = {"batch_size": 16, "max_steps_per_epoch": 3, "optimizer": {"lr": 0.05},
              "schedule": {"kind": "constant"}, "attack": {"steps": 2}}
    transfer = {"data": {"dataset": "npz", "path": str(npz_b), "train_fraction": 0.13, "subset": "balanced"}}
    adv = {"type": "finetune", "mode": "pgd", "epochs": 2, **common, "eval": evals, "transfer": transfer}
    std = {"type": "finetune", "mode": "clean", "epochs": 2, **common, "eval": {**evals, "robust": False},
           "transfer": transfer}

    def config(density: float, dense_too: bool) -> dict:
        stages = [
            {"name": "warmup", "type": "dense_warmup", "mode": "clean", "epochs": 1, "batch_size": 64,
             "max_steps_per_epoch": 4, "optimizer": {"lr": 0.05}, "schedule": {"kind": "constant"},
             "eval": evals},  # dense_warmup's summary needs val RA
            {"name": "ticket", "type": "test_magprune", "density": density},
            {"name": "t_adv", "input": "ticket", **adv},
            {"name": "t_std", "input": "ticket", **std},
        ]
        if dense_too:
            stages += [{"name": "d_adv", "input": "warmup", **adv}, {"name": "d_std", "input": "warmup", **std},
                       {"name": "export", "type": "export", "input": "t_adv", "parity_samples": 16}]
        return {"run": {"name": "t", "seed": 2}, "data": {"dataset": "digits"}, "model": {"arch": "small_cnn"},
                "stages": stages}

    runs = {}
    for key, density, dense_too in (("a", 0.5, True), ("b", 0.2, False)):
        cfg_path = root / f"{key}.yaml"
        cfg_path.write_text(yaml.safe_dump(config(density, dense_too), sort_keys=False))
        runs[key] = root / f"run_{key}"
        run_cli("run", str(cfg_path), "--run-dir", str(runs[key]), "-q", env=env, check=True)
    return {"root": root, "env": env, "runs": runs, "npz_b": npz_b, "npz_rgb": npz_rgb,
            "config": config(0.5, True)}


def record(run_dir, name) -> dict:
    return json.loads((run_dir / name / "stage.json").read_text())


def expected_stats(path) -> tuple[list[float], list[float]]:
    x = np.load(path)["x_train"].astype(np.float64) / 255.0  # x_val is its own split: train is all of x_train
    return [round(float(x.mean()), 4)], [round(float(x.std()), 4)]


def test_ticket_transfers_with_new_dense_head_and_kept_backbone_mask(world):
    run = world["runs"]["a"]
    rec = record(run, "t_adv")
    card = rec["model"]
    mean, std = expected_stats(world["npz_b"])
    assert card["num_classes"] == 5 and card["class_names"] == B_NAMES and card["dataset"] == "npz"
    assert card["mean"] == pytest.approx(mean) and card["std"] == pytest.approx(std)

    weights = store.load_tensors(run / "t_adv" / "model.safetensors")
    assert weights["normalize.mean"].flatten().tolist() == pytest.approx(mean)
    assert weights["normalize.std"].flatten().tolist() == pytest.approx(std)
    head = weights["net.fc.weight"]
    assert tuple(head.shape) == (5, 64) and int((head == 0).sum()) == 0  # new and dense

    ticket = store.load_tensors(run / "ticket" / "masks.safetensors")
    kept = store.load_tensors(run / "t_adv" / "masks.safetensors")
    before = store.load_tensors(run / "ticket" / "model.safetensors")
    assert "net.fc.weight" in ticket and set(kept) == set(ticket) - {"net.fc.weight"}
    for name, mask in kept.items():
        assert bool((mask == ticket[name]).all()), name
        assert int((weights[name][~mask] != 0).sum()) == 0, f"{name}: masked weights moved"
        assert int((weights[name][mask] != before[name][mask]).sum()) > 0, f"{name}: kept weights not trained"

    t = rec["transfer"]
    assert t["source"]["dataset"] == "digits" and t["source"]["num_classes"] == 10
    assert t["source"]["arch"] == "small_cnn" and t["source"]["stage"] == "ticket"
    assert t["masks"]["dropped"] == ["net.fc.weight"] and t["masks"]["source_sparsity"] == pytest.approx(0.5)
    backbone = sum(int(m.sum()) for m in kept.values()) / sum(m.numel() for m in kept.values())
    assert t["masks"]["density_kept"] == pytest.approx(backbone) == pytest.approx(rec["metrics"]["density"])
    assert t["head"] == {"mode": "new", "layer": "net.fc", "dense": True, "num_classes": 5}
    # 13% of 200 = 26 images: 5 per class and one more for one class drawn under subset_seed
    tgt = t["target"]
    assert tgt["train_images"] == 26 and sorted(tgt["train_per_class"]) == [5, 5, 5, 5, 6]
    assert (tgt["train_fraction"], tgt["subset"], tgt["subset_seed"]) == (0.13, "balanced", 0)
    assert rec["model_data"]["path"] == str(world["npz_b"])
    assert rec["metrics"]["RA_best"] is not None  # adversarial: SA and RA

    std = record(run, "t_std")
    assert std["config"]["mode"] == "clean" and std["metrics"]["SA_best"] is not None
    dense = record(run, "d_adv")["transfer"]["masks"]
    assert dense["source_layers"] == 0 and dense["source_sparsity"] == 0.0 and dense["kept_layers"] == 0


def test_transferred_model_exports_to_onnx_with_b_classes(world):
    run = world["runs"]["a"]
    meta = record(run, "export")["onnx_metadata"]
    assert meta["class_names"] == B_NAMES and meta["dataset"] == "npz"
    sess = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.load(world["npz_b"])["x_test"][:4].astype(np.float32) / 255.0
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (4, 5)


def test_double_win_table_reads_real_transfer_runs(world):
    runs = world["runs"]
    result = double_win_table([runs["a"], runs["b"]])
    (table,) = result["tables"]
    assert table["task"]["source"] == "digits" and table["task"]["train_fraction"] == 0.13
    assert [round(r["sparsity"], 4) for r in table["rows"]] == [0.5, 0.8]
    assert table["counts"]["0.0"] == {"standard": 1, "adversarial": 1}
    # the numbers are the test SA/RA at the best-val epochs of each stage's own history
    hist = [json.loads(line) for line in (runs["b"] / "t_adv" / "history.jsonl").read_text().splitlines()]
    best = max(hist, key=lambda r: r["val_ra"])  # max() keeps the first of ties, as select_best does
    assert (table["rows"][1]["adv_sa"], table["rows"][1]["adv_ra"]) == (best["test_sa"], best["test_ra"])
    hist = [json.loads(line) for line in (runs["a"] / "d_std" / "history.jsonl").read_text().splitlines()]
    assert table["dense"]["std_sa"] == max(hist, key=lambda r: r["val_sa"])["test_sa"]

    out = run_cli("double-win", str(runs["a"]), str(runs["b"]), "--tolerance", "100", check=True)
    assert "| 80.00% |" in out.stdout and "Highest double-win sparsity: **80.00%**" in out.stdout


def test_transfer_killed_mid_stage_resumes_bit_identically(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["runs"]["a"], run)
    shutil.rmtree(run / "t_adv")
    cfg = {**world["config"], "stages": world["config"]["stages"][:3]}  # warmup, ticket (done), t_adv
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # 2 steps per epoch: killed at step 3, after the epoch-1 progress save (the new head is re-made, then replaced)
    fault = {**world["env"], "PIPELINE_FAULT_AFTER_STEPS": "3"}
    killed = run_cli("run", str(path), "--run-dir", str(run), "-q", env=fault)
    assert killed.returncode != 0 and (run / "t_adv" / "progress" / "manifest.json").exists()
    run_cli("run", str(path), "--run-dir", str(run), "-q", env=world["env"], check=True)
    assert "t_adv: resuming from saved progress (epoch 1" in (run / "run.log").read_text()
    for name in ("model.safetensors", "masks.safetensors"):
        assert store.sha256_file(run / "t_adv" / name) == store.sha256_file(world["runs"]["a"] / "t_adv" / name)


def test_input_shape_mismatch_names_both_datasets(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["runs"]["a"], run)
    cfg = world["config"]
    bad = dict(cfg["stages"][2], name="bad")
    bad["transfer"] = {"data": {"dataset": "npz", "path": str(world["npz_rgb"])}}
    cfg = {**cfg, "stages": cfg["stages"] + [bad]}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = run_cli("run", str(path), "--run-dir", str(run), "-q", env=world["env"])
    assert proc.returncode == 2, proc.stderr
    assert "3x8x8" in proc.stderr and "1x8x8" in proc.stderr
    assert "digits" in proc.stderr and str(world["npz_rgb"]) in proc.stderr


def test_transfer_block_is_validated_with_its_path(tmp_path):
    cfg = {"data": {"dataset": "digits"}, "stages": [
        {"name": "warmup", "type": "dense_warmup", "epochs": 1},
        {"name": "ft", "type": "finetune", "transfer": {"data": {"dataset": "npz", "path": str(tmp_path / "nope.npz")},
                                                        "head": "old"}}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = "\n".join(err.value.problems)
    assert "stages[1].transfer.data" in text and "nope.npz" in text
    assert "stages[1].transfer.head" in text


def test_ticket_masks_that_do_not_fit_the_model_fail_loudly():
    import torch

    from pipeline.models.card import build_model
    from pipeline.sparsity import MaskSet, prunable_params

    card = {"arch": "small_cnn", "num_classes": 3, "in_chans": 1, "input_size": [8, 8], "mean": [0.3], "std": [0.4],
            "class_names": ["a", "b", "c"], "dataset": "x"}
    model = build_model(card)
    masks = MaskSet({n: torch.ones(p.shape, dtype=torch.bool) for n, p in prunable_params(model).items()})
    kept, dropped = transfer_masks(masks, model, keep=True, new_head=True)
    assert dropped == [f"{model.classifier_name}.weight"] and set(kept) == set(masks) - set(dropped)
    wrong = MaskSet({**{n: masks[n] for n in kept}, "module.extra.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(CheckpointError, match=r"module.extra.weight \(2, 2\) \(no such parameter\)"):
        transfer_masks(wrong, model, keep=True, new_head=True)
    first = next(iter(kept))
    with pytest.raises(CheckpointError, match=f"{first} \\(1,\\) -> "):
        transfer_masks(MaskSet({first: torch.ones(1, dtype=torch.bool)}), model, keep=True, new_head=True)
