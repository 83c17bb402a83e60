"""The evaluate stage: metric definitions on constructed results, AutoAttack wiring (fake modules) and
its absence, config rules, and one tiny run through the real CLI (several attacks, both checkpoints,
generated corruptions)."""
from __future__ import annotations

import json
import shutil
import sys
import textwrap
import types

import pytest
import torch
import yaml

from pipeline.metrics.autoattack import AutoAttackConfig, find_autoattack, run_autoattack
from pipeline.engine.errors import PipelineError, StageFailed
from pipeline.engine import store
from pipeline.engine.rundir import StageRecord
from pipeline.metrics.evaluation import EvaluationMetrics, SplitScores, checkpoint_gaps
from pipeline.train.checkpoints import CheckpointsRecord, kept_checkpoints
from stages.evaluate import EvaluateConfig

from tests.conftest import BRIGHTNESS_MEANS, Brightness, run_cli, tiny_config

EPS = 8 / 255


# -- metric definitions on constructed results -------------------------------------------------------

def stage_on_disk(tmp_path, files: dict[str, bytes], **sections) -> StageRecord:
    sdir = tmp_path / "train"
    sdir.mkdir(parents=True)
    shas = {name: store.atomic_write_bytes(sdir / name, data) for name, data in files.items()}
    store.atomic_write_json(sdir / "stage.json", {"name": "train", "type": "dense_warmup", **sections, "files": shas})
    return StageRecord(tmp_path, "train")


HISTORY = [{"epoch": 1, "train_acc": 50.0, "val_ra": 30.0, "test_ra": 31.0, "test_sa": 60.0},
           {"epoch": 2, "train_acc": 70.0, "val_ra": 40.0, "test_ra": 42.0, "test_sa": 70.0},
           {"epoch": 3, "train_acc": 80.0, "val_ra": 35.0, "test_ra": 38.0, "test_sa": 75.0}]


def test_checkpoints_come_from_the_record_save_trained_writes(tmp_path):
    rec = CheckpointsRecord(files={"model.safetensors": "best", "model_final.safetensors": "final"}, best_epoch=2,
                            final_epoch=3)
    both = {"model.safetensors": b"a", "model_final.safetensors": b"b"}
    cks = kept_checkpoints(stage_on_disk(tmp_path / "a", both, checkpoints=rec.to_json()))
    assert [(c.which, c.file, c.epoch) for c in cks] == [("best", "model.safetensors", 2),
                                                         ("final", "model_final.safetensors", 3)]
    # a stage that keeps one model without a checkpoints record (early_bird, imp)
    plain = stage_on_disk(tmp_path / "b", {"model.safetensors": b"a"})
    assert [(c.which, c.epoch) for c in kept_checkpoints(plain)] == [("unknown", None)]
    # best epoch = last epoch: the one file is both checkpoints
    assert CheckpointsRecord(files={"model.safetensors": "final"}, best_epoch=3, final_epoch=3).same_weights
    assert not rec.same_weights
    # the record is typed: an unknown key is an error naming the file and the key
    bad = stage_on_disk(tmp_path / "c", both, checkpoints={**rec.to_json(), "chosen": "best"})
    with pytest.raises(PipelineError, match=r"stage.json: checkpoints: unknown key\(s\) chosen"):
        kept_checkpoints(bad)


def test_gap_definitions_and_metric_keys_hand_computed():
    res = {"sa": {"train": 90.0, "test": 80.0}, "n": {"train": 10, "test": 10},
           "ra": {"pgd20": {"train": 60.0, "test": 45.0, "gap": 15.0}}}
    gaps = checkpoint_gaps(res, "pgd20", HISTORY, epoch=2)
    assert gaps == {"robust_gap": 15.0, "robust_gap_running_train": 70.0 - 45.0, "running_train_acc": 70.0}
    assert checkpoint_gaps(res, "pgd20", HISTORY, epoch=None)["robust_gap_running_train"] is None
    assert checkpoint_gaps(res, "pgd20", [], epoch=2)["robust_gap_running_train"] is None  # clean-trained
    first = EvaluateConfig(name="e", type="evaluate").attacks[0]
    m = EvaluationMetrics(checkpoint="best", splits={"train": SplitScores(10, 90.0, 0.3, 60.0, 1.0),
                                                     "test": SplitScores(10, 80.0, 0.5, 45.0, 1.2)},
                          attack=first.model_dump(mode="json"), ra=res["ra"], checkpoints={},
                          robust_gap=gaps["robust_gap"])
    flat = m.to_json()
    assert flat["train_ra"] - flat["test_ra"] == flat["robust_gap"] == 15.0
    assert flat["test_sa"] == 80.0 and flat["checkpoint"] == "best" and flat["attack"]["steps"] == 20
    assert list(flat)[:6] == ["checkpoint", "train_sa", "train_n", "train_loss", "train_ra", "train_robust_loss"]
    assert EvaluationMetrics.from_json(flat) == m
    with pytest.raises(PipelineError, match="unknown evaluation metric 'test_acc'"):
        EvaluationMetrics.from_json({**flat, "test_acc": 1.0})


def test_config_attack_rules():
    default = EvaluateConfig(name="e", type="evaluate")
    assert [a.label() for a in default.attacks] == ["pgd20"] and default.attacks[0].step == pytest.approx(2 / 255)
    legacy = EvaluateConfig(name="e", type="evaluate", attack={"steps": 3})
    assert legacy.attack is None and legacy.attacks[0].steps == 3
    again = EvaluateConfig(**legacy.model_dump(mode="json"))  # the resolved config validates again
    assert again.attacks == legacy.attacks
    many = EvaluateConfig(name="e", type="evaluate", attacks=[
        {"steps": 10, "restarts": 5}, {"kind": "fgsm_rs"}, {"kind": "autoattack", "eps": "4/255"}])
    assert [a.label() for a in many.attacks] == ["pgd10r5", "fgsm_rs", "autoattack_standard_eps4"]
    assert many.attacks[1].steps == 1
    with pytest.raises(ValueError, match="distinct `name`s"):
        EvaluateConfig(name="e", type="evaluate", attacks=[{"steps": 3}, {"steps": 3}])
    with pytest.raises(ValueError, match="not both"):
        EvaluateConfig(name="e", type="evaluate", attacks=[{"steps": 3}], attack={"steps": 3})
    with pytest.raises(ValueError, match="one step"):
        EvaluateConfig(name="e", type="evaluate", attacks=[{"kind": "fgsm_rs", "steps": 5}])


# -- AutoAttack through fake modules ------------------------------------------------------------------

MEANS = BRIGHTNESS_MEANS
X = MEANS.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
Y = (MEANS > 0.5).long()
# an eps shift towards the boundary flips exactly the images within eps of 0.5: four of six
EXPECTED_RA = 100.0 * 2 / 6


def _push(x, y, eps):
    return (x - eps * (2 * y.view(-1, 1, 1, 1).float() - 1)).clamp(0, 1)


def fake_reference(received: dict, overshoot: float = 1.0):
    """The git package's signature: AutoAttack(model, norm, eps, seed, verbose, ..., version, device)."""
    mod = types.ModuleType("autoattack")

    class AutoAttack:
        def __init__(self, model, norm="Linf", eps=0.3, seed=None, verbose=True, attacks_to_run=(),
                     version="standard", is_tf_model=False, device="cuda", log_path=None):
            received.update(norm=norm, eps=eps, seed=seed, version=version, device=device, verbose=verbose)

        def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False):
            received.update(bs=bs, n=len(y_orig))
            return _push(x_orig, y_orig, received["eps"] * overshoot)

    mod.AutoAttack = AutoAttack
    return mod


def fake_pypi(received: dict):
    """pyautoattack's signature: keyword-only arguments, batch_size=, returns (x_adv, y_adv)."""
    mod = types.ModuleType("pyautoattack")

    class AutoAttack:
        def __init__(self, model, *, attacks=None, device="cpu", eps=0.3, norm="Linf", seed=None, version="standard"):
            received.update(eps=eps, device=device, seed=seed, version=version)

        def run_standard_evaluation(self, x, y, /, *, batch_size=250, state_path=None):
            received.update(batch_size=batch_size)
            return _push(x, y, received["eps"]), y

    mod.AutoAttack = AutoAttack
    return mod


def test_autoattack_reference_signature_known_answer(monkeypatch):
    got: dict = {}
    monkeypatch.setitem(sys.modules, "autoattack", fake_reference(got))
    model = Brightness().train()
    out = run_autoattack(model, X, Y, AutoAttackConfig(), device="cpu", seed=5, batch_size=4)
    assert out == {"acc": pytest.approx(EXPECTED_RA), "clean_acc": 100.0, "n": 6, "backend": "autoattack"}
    assert got == {"norm": "Linf", "eps": pytest.approx(EPS), "seed": 5, "version": "standard", "device": "cpu",
                   "verbose": False, "bs": 4, "n": 6}
    assert model.training  # modes restored


def test_autoattack_pypi_repackaging_known_answer(monkeypatch):
    got: dict = {}
    monkeypatch.setitem(sys.modules, "autoattack", None)
    monkeypatch.setitem(sys.modules, "pyautoattack", fake_pypi(got))
    out = run_autoattack(Brightness(), (X * 255).round().to(torch.uint8), Y, AutoAttackConfig(), device="cpu",
                         seed=1, batch_size=8)
    assert out["backend"] == "pyautoattack" and out["acc"] == pytest.approx(EXPECTED_RA)
    assert got["batch_size"] == 8 and got["eps"] == pytest.approx(EPS)


def test_autoattack_outside_the_ball_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "autoattack", fake_reference({}, overshoot=2.0))
    with pytest.raises(StageFailed, match="outside the Linf ball"):
        run_autoattack(Brightness(), X, Y, AutoAttackConfig(), device="cpu", seed=0, batch_size=8)


def test_autoattack_missing_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "autoattack", None)
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    assert find_autoattack("auto") is None
    with pytest.raises(PipelineError, match=r"pip install git\+https://github.com/fra31/auto-attack"):
        run_autoattack(Brightness(), X, Y, AutoAttackConfig(), device="cpu", seed=0, batch_size=8)


# -- the real CLI on a tiny run ------------------------------------------------------------------------

FAKE_PACKAGES = {
    # the reference signature; returns the images unchanged, so its RA is the clean accuracy
    "autoattack/__init__.py": """
        import json, os
        class AutoAttack:
            def __init__(self, model, norm="Linf", eps=0.3, seed=None, verbose=True, attacks_to_run=(),
                         version="standard", is_tf_model=False, device="cuda", log_path=None):
                self.kw = dict(norm=norm, eps=eps, seed=seed, version=version, device=device)
            def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False):
                with open(os.environ["FAKE_AA_LOG"], "w") as f:
                    json.dump({**self.kw, "bs": bs, "n": int(x_orig.shape[0])}, f)
                return x_orig.clone()
    """,
    "pyautoattack/__init__.py": 'raise ImportError("simulated: not installed")\n',
}


def _write_fakes(root):
    for rel, text in FAKE_PACKAGES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def _config(evaluate: dict) -> dict:
    cfg = tiny_config(warmup={"select": "best"})
    cfg["stages"] = [cfg["stages"][0], {"name": "evaluate", "type": "evaluate", "input": "warmup",
                                        "train_limit": 64, "val_limit": 64, "test_limit": 64, "batch_size": 32,
                                        **evaluate}]
    return cfg


ATTACKS = [{"steps": 2}, {"kind": "fgsm_rs", "splits": ["test"]},
           {"kind": "autoattack", "backend": "autoattack", "n": 64},
           {"kind": "autoattack", "backend": "pyautoattack", "name": "aa_pypi", "on_missing": "skip"}]
CORRUPTIONS = {"generate": True, "limit": 16, "types": ["gaussian_noise", "fog", "contrast"], "severities": [1, 3, 5]}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    fakes = _write_fakes(root / "fakes")
    cfg_path = root / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_config({"attacks": ATTACKS, "corruptions": CORRUPTIONS}), sort_keys=False))
    env = {"PYTHONPATH": str(fakes), "FAKE_AA_LOG": str(root / "aa.json")}
    run_cli("run", str(cfg_path), "--run-dir", str(root / "run"), "-q", env=env, check=True)
    record = json.loads((root / "run" / "evaluate" / "stage.json").read_text())
    return {"root": root, "run": root / "run", "record": record, "metrics": record["metrics"], "env": env}


def test_cli_attacks_each_stored_with_parameters(tiny_run):
    m = tiny_run["metrics"]
    for key in ("train_ra", "test_sa", "test_ra", "robust_gap", "robust_overfitting", "robust_gap_running_train"):
        assert key in m, key
    assert m["attack"]["steps"] == 2 and m["robust_gap"] == pytest.approx(m["train_ra"] - m["test_ra"])
    pgd = m["ra"]["pgd2"]
    assert (pgd["train"], pgd["val"], pgd["test"]) == (m["train_ra"], m["val_ra"], m["test_ra"])
    assert pgd["attack"] == {**m["attack"]} and pgd["n"] == {"train": 64, "val": 64, "test": 64}
    fgsm = m["ra"]["fgsm_rs"]
    assert set(fgsm) >= {"test", "attack"} and "train" not in fgsm and fgsm["attack"]["steps"] == 1
    assert "pip install" in m["ra"]["aa_pypi"]["skipped"] and "test" not in m["ra"]["aa_pypi"]


def test_cli_autoattack_wiring_with_a_fake_package(tiny_run):
    m = tiny_run["metrics"]
    aa = m["ra"]["autoattack_standard"]
    got = json.loads((tiny_run["root"] / "aa.json").read_text())
    assert got == {"norm": "Linf", "eps": pytest.approx(EPS), "seed": 3, "version": "standard", "device": "cpu",
                   "bs": 32, "n": 64}
    # the fake returns the clean images: the recomputed robust accuracy is the clean accuracy
    assert aa["backend"] == "autoattack" and aa["test"] == m["test_sa"] and aa["n"] == {"test": 64}


def test_cli_gap_and_overfitting_at_best_and_final(tiny_run):
    m, run = tiny_run["metrics"], tiny_run["run"]
    warm = json.loads((run / "warmup" / "stage.json").read_text())
    history = [json.loads(line) for line in (run / "warmup" / "history.jsonl").read_text().splitlines()]
    best_epoch, final_epoch = warm["checkpoints"]["best_epoch"], warm["checkpoints"]["final_epoch"]
    best, final = m["checkpoints"]["best"], m["checkpoints"]["final"]
    assert m["checkpoint"] == "best" and (best["file"], final["file"]) == ("model.safetensors", "model_final.safetensors")
    assert (best["epoch"], final["epoch"]) == (best_epoch, final_epoch)
    assert set(final["ra"]) == {"pgd2"}  # the other checkpoint gets the first attack only
    for ck in (best, final):
        assert ck["robust_gap"] == pytest.approx(ck["ra"]["pgd2"]["train"] - ck["ra"]["pgd2"]["test"])
        row = next(r for r in history if r["epoch"] == ck["epoch"])
        assert ck["robust_gap_running_train"] == pytest.approx(row["train_acc"] - ck["ra"]["pgd2"]["test"])
    assert m["robust_overfitting_measured"] == pytest.approx(best["ra"]["pgd2"]["test"] - final["ra"]["pgd2"]["test"])
    assert (m["robust_gap_best"], m["robust_gap_final"]) == (best["robust_gap"], final["robust_gap"])
    best_row = max(history, key=lambda r: r["val_ra"])  # ties: the earliest, as max() keeps the first
    assert m["robust_overfitting"] == pytest.approx(best_row["test_ra"] - history[-1]["test_ra"])


def test_cli_generated_corruptions(tiny_run):
    m, run = tiny_run["metrics"], tiny_run["run"]
    c = m["corruption"]
    assert c["source"] == "generated" and c["backend"] == "builtin" and c["n"] == 16 and c["checkpoint"] == "best"
    assert set(c["per"]) == {"gaussian_noise", "fog", "contrast"} and all(len(v) == 3 for v in c["per"].values())
    assert c["mean_acc"] == pytest.approx(sum(sum(v) for v in c["per"].values()) / 9) and c["mean_acc_15"] is None
    full = json.loads((run / "evaluate" / "corruption.json").read_text())
    assert full["per"] == c["per"] and full["parameters"]["contrast"] == [0.75, 0.5, 0.4, 0.3, 0.15]
    assert "corruption.json" in tiny_run["record"]["files"]


def test_cli_missing_autoattack_fails_before_any_work(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    cfg_path = tmp_path / "cfg.yaml"
    attacks = [{"steps": 2}, {"kind": "autoattack", "backend": "pyautoattack"}]
    cfg_path.write_text(yaml.safe_dump(_config({"attacks": attacks}), sort_keys=False))
    proc = run_cli("run", str(cfg_path), "--run-dir", str(run), "-q", env=tiny_run["env"])
    assert proc.returncode == 1, proc.stderr
    assert "pip install git+https://github.com/fra31/auto-attack" in proc.stderr
    assert "on_missing: skip" in proc.stderr
    assert "pgd2 train" not in (run / "run.log").read_text().split("running evaluate")[-1]
