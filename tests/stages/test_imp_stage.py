"""imp stage (Double-Win IMP with rewinding, OMP and random baselines) through the real CLI on tiny
digits runs, plus the criterion block in-process."""
from __future__ import annotations

import json
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from pipeline.engine.config import validate_tree
from pipeline.engine.errors import ConfigError
from pipeline.sparsity import MaskSet, global_magnitude_masks, topk_mask
from pipeline.sparsity.tickets import CriterionConfig, ticket_masks

from tests.conftest import run_cli, tiny_config

TRAIN = {"batch_size": 64, "max_steps_per_epoch": 3, "optimizer": {"lr": 0.05}, "schedule": {"kind": "constant"},
         "attack": {"steps": 2, "step": "2/255"}, "eval": {"val_limit": 32, "test_limit": 32, "attack": {"steps": 2}}}
IMP = {"name": "imp", "type": "imp", "input": "warmup", "mode": "pgd", **TRAIN, "epochs": 2, "rounds": 3,
       "progress_every_steps": 2}


def config() -> dict:
    cfg = tiny_config()
    warmup = {**cfg["stages"][0], "epochs": 1}
    omp = {"name": "omp", "type": "imp", "input": "warmup", "method": "omp", "target_sparsity": 0.7, **TRAIN, "epochs": 1}
    rnd = {"name": "rnd", "type": "imp", "input": "warmup", "method": "random", "target_sparsity": 0.7, **TRAIN,
           "epochs": 1}
    pick = {"name": "pick", "type": "finetune", "input": "imp", "ticket_round": 2, "mode": "pgd", **TRAIN, "epochs": 1}
    cfg["stages"] = [warmup, IMP, omp, rnd, pick]
    return cfg


def record(run_dir, name) -> dict:
    return json.loads((run_dir / name / "stage.json").read_text())


def conv(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(".weight") and v.ndim == 4}


def kept(masks: dict) -> int:
    return sum(int(m.sum()) for m in masks.values())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imp")
    path = tmp / "cfg.yaml"
    path.write_text(json.dumps(config()))
    run_cli("run", str(path), "--run-dir", str(tmp / "ref"), "-q", check=True)
    return path, tmp / "ref"


def test_round_sparsities_and_rewinding(reference):
    _, run_dir = reference
    warm = load_file(run_dir / "warmup" / "model.safetensors")
    total = sum(w.numel() for w in conv(warm).values())
    rec = record(run_dir, "imp")
    previous = None
    for k in (1, 2, 3):
        masks = load_file(run_dir / "imp" / f"round_{k:02d}.masks.safetensors")
        assert set(masks) == set(conv(warm))  # conv only, as the reference
        assert kept(masks) == round(0.8 ** k * total)  # sparsity 1 - (1 - p)^k
        if previous is not None:
            assert all(bool((masks[n] <= previous[n]).all()) for n in masks)  # pruned among the survivors
        previous = masks
        # the ticket = the rewind point (the input model, BN statistics included) under the round's mask
        ticket = load_file(run_dir / "imp" / f"round_{k:02d}.safetensors")
        assert ticket.keys() == warm.keys()
        for name, value in warm.items():
            assert torch.equal(ticket[name], value * masks[name] if name in masks else value), (k, name)
        entry = rec["imp"]["rounds"][k - 1]
        assert entry["round"] == k and entry["kept"] == kept(masks)
        assert entry["target_sparsity"] == pytest.approx(1 - 0.8 ** k)
        assert set(entry["files"]) == {f"round_{k:02d}.safetensors", f"round_{k:02d}.masks.safetensors"}
    # round 1 prunes 20% of the pre-trained magnitudes (prune_before_training)
    first = load_file(run_dir / "imp" / "round_01.masks.safetensors")
    assert global_magnitude_masks(conv(warm), 0.8) == first
    # the stage's model is the last round's ticket
    assert MaskSet(load_file(run_dir / "imp" / "masks.safetensors")) == previous
    assert rec["imp"]["selected_round"] == 3 and rec["sparsity"]["kept"] == kept(previous)
    assert rec["flops"]["training"]["paper"] == sum(r["flops"]["paper"] for r in rec["imp"]["rounds"])
    rows = [json.loads(line) for line in (run_dir / "imp" / "history.jsonl").read_text().splitlines()]
    assert [(r["round"], r["epoch"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]


def test_late_rewinding_to_the_dense_network_after_epoch_n(tmp_path):
    """prune_before_training: false + rewind_to: epoch_1: a dense round 0 trains, its epoch-1 weights
    are the rewind point of every round (one tensor under each round's mask), and they are trained
    weights, not the input's."""
    cfg = tiny_config()
    late = {**IMP, "rounds": 2, "prune_before_training": False, "rewind_to": "epoch_1"}
    cfg["stages"] = [{**cfg["stages"][0], "epochs": 1}, late]
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    run_cli("run", str(path), "--run-dir", str(tmp_path / "run"), "-q", check=True)
    stage = tmp_path / "run" / "imp"
    rows = [json.loads(line) for line in (stage / "history.jsonl").read_text().splitlines()]
    assert [(r["round"], r["epoch"]) for r in rows] == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]
    warm = load_file(tmp_path / "run" / "warmup" / "model.safetensors")
    tickets = [load_file(stage / f"round_{k:02d}.safetensors") for k in (1, 2)]
    masks = [load_file(stage / f"round_{k:02d}.masks.safetensors") for k in (1, 2)]
    for name in masks[0]:
        both = masks[1][name]  # round 2's survivors are round 1's too
        assert torch.equal(tickets[0][name][both], tickets[1][name][both]), name
        assert not torch.equal(tickets[0][name][both], warm[name][both]), name
    assert record(tmp_path / "run", "imp")["imp"]["rewind_to"] == "epoch_1"


def test_omp_and_random_baselines_hit_the_target(reference):
    _, run_dir = reference
    warm = conv(load_file(run_dir / "warmup" / "model.safetensors"))
    total = sum(w.numel() for w in warm.values())
    omp = load_file(run_dir / "omp" / "masks.safetensors")
    rnd = load_file(run_dir / "rnd" / "masks.safetensors")
    assert kept(omp) == kept(rnd) == round(0.3 * total)
    assert global_magnitude_masks(warm, 0.3) == omp
    assert MaskSet(rnd) != MaskSet(omp)
    for name, mask in rnd.items():  # global random: every layer near the global density
        assert abs(mask.float().mean().item() - 0.3) < 0.15, name
    for stage in ("omp", "rnd"):
        rec = record(run_dir, stage)
        assert [r["round"] for r in rec["imp"]["rounds"]] == [1]
        assert rec["imp"]["rounds"][0]["target_sparsity"] == 0.7
        assert (run_dir / stage / "round_01.masks.safetensors").read_bytes() == \
               (run_dir / stage / "masks.safetensors").read_bytes()


def test_finetune_picks_another_rounds_ticket(reference):
    _, run_dir = reference
    assert record(run_dir, "imp")["metrics"]["selected_round"] == 3
    round2 = load_file(run_dir / "imp" / "round_02.masks.safetensors")
    picked = load_file(run_dir / "pick" / "masks.safetensors")
    assert picked.keys() == round2.keys() and all(torch.equal(picked[k], round2[k]) for k in round2)
    weights = load_file(run_dir / "pick" / "model.safetensors")
    assert all(int((weights[k][~m]).count_nonzero()) == 0 for k, m in picked.items())
    assert record(run_dir, "pick")["metrics"]["density"] == pytest.approx(kept(round2) / sum(m.numel() for m in round2.values()))


def test_sigkill_mid_round_then_resume_is_bit_identical(reference, tmp_path):
    path, ref = reference
    cut = tmp_path / "cut"
    shutil.copytree(ref / "warmup", cut / "warmup")  # same fingerprint: skipped
    args = ["run", str(path), "--run-dir", str(cut), "--until", "imp", "-q"]
    # round 1 is 2 epochs x 3 steps; the kill comes at step 5 of round 2 (mid epoch 2; last save at step 4)
    killed = run_cli(*args, env={"PIPELINE_FAULT_AFTER_STEPS": "11"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    manifest = json.loads((cut / "imp" / "progress" / "round_02" / "manifest.json").read_text())
    assert manifest["step"] == 4
    resumed = run_cli(*args[:-1], check=True)
    assert "imp/round_02: resuming from saved progress" in resumed.stderr
    assert "[imp] round 1" not in resumed.stderr  # finished rounds are not trained again
    files = sorted(record(ref, "imp")["files"])
    assert files == sorted(record(cut, "imp")["files"])
    for name in files:
        if name != "history.jsonl":
            assert (cut / "imp" / name).read_bytes() == (ref / "imp" / name).read_bytes(), name
    drop = ("train_seconds", "eval_seconds")
    rows = [[{k: v for k, v in json.loads(line).items() if k not in drop}
             for line in (d / "imp" / "history.jsonl").read_text().splitlines()] for d in (ref, cut)]
    assert rows[0] == rows[1]


def test_config_errors_name_their_path():
    cfg = tiny_config()
    base = {"type": "imp", "input": "warmup", "epochs": 2}
    cfg["stages"] = [cfg["stages"][0],
                     {"name": "a", **base, "target_sparsity": 0.5},
                     {"name": "b", **base, "method": "omp"},
                     {"name": "c", **base, "criterion": {"pruner": "level", "config_list": [
                         {"op_types": ["Conv2d"], "sparse_ratio": 0.5}]}},
                     {"name": "d", **base, "rewind_to": "epoch_3"},
                     {"name": "e", **base, "method": "random", "target_sparsity": 0.5, "rounds": 4},
                     {"name": "f", **base, "rounds": 2, "select_round": 3},
                     {"name": "g", **base, "rewind_to": "epoch_1"}]
    with pytest.raises(ConfigError) as err:
        validate_tree(cfg)
    text = "\n".join(err.value.problems)
    assert "stages[1].target_sparsity: only for method omp / random" in text
    assert "stages[2].target_sparsity: required for method omp" in text
    assert "stages[3].criterion.config_list: entry 0 sets sparse_ratio" in text
    assert "stages[4].rewind_to: epoch_3 is after the last epoch of a training run (2)" in text
    assert "stages[5].rounds: only used with method imp" in text
    assert "stages[6].select_round: must be between 1 and 2" in text
    assert ("stages[7].rewind_to: epoch_1 rewinds to the dense network after that many epochs, which needs a "
            "dense first run: set prune_before_training: false") in text


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2, self.fc = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 6, 3), nn.Linear(24, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv2(self.conv1(x)), 1))


def test_criterion_block_nni_level_random_and_within():
    net = _Net()
    convs = {"conv1.weight": net.conv1.weight, "conv2.weight": net.conv2.weight}
    level = ticket_masks(net, CriterionConfig(pruner="level", scope="conv"), 0.5)
    assert level == MaskSet({n: topk_mask(p.detach().abs(), round(0.5 * p.numel())) for n, p in convs.items()})  # per layer

    within = ticket_masks(net, CriterionConfig(scope="conv_linear", dense_last=True), 0.6)
    assert list(within) == ["conv1.weight", "conv2.weight"]
    total = sum(p.numel() for p in convs.values())
    gen = torch.Generator().manual_seed(1)
    rnd = ticket_masks(net, CriterionConfig(pruner="random", scope="conv"), 0.3, within=within, generator=gen)
    assert kept(rnd) == round(0.3 * total)
    assert all(bool((rnd[n] <= within[n]).all()) for n in rnd)
    inner = ticket_masks(net, CriterionConfig(pruner="level", scope="conv"), 0.3, within=within)
    assert all(bool((inner[n] <= within[n]).all()) for n in inner)
