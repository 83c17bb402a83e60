"""The training loop's pieces with known answers: learning-rate schedules and the fast-AT path."""
from __future__ import annotations

import json

import pytest

from pipeline.engine.config import validate_tree
from pipeline.engine.errors import ConfigError
from pipeline.train.loop import ScheduleConfig, TrainingConfig, lr_at

from tests.conftest import run_cli, tiny_config


def test_multistep_schedule():
    s = ScheduleConfig(kind="multistep", milestones=[100, 150], gamma=0.1)
    assert [lr_at(s, 0.1, e, 0, 352, 200) for e in (0, 99, 100, 149, 150, 199)] == \
           pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cosine_schedule_is_per_iteration():
    s = ScheduleConfig(kind="cosine", min_lr=0.0)
    assert lr_at(s, 0.1, 0, 0, 10, 4) == pytest.approx(0.1)
    assert lr_at(s, 0.1, 2, 0, 10, 4) == pytest.approx(0.05)  # half way
    assert lr_at(s, 0.1, 3, 5, 10, 4) == pytest.approx(0.1 * 0.5 * (1 + __import__("math").cos(3.5 / 4 * 3.141592653589793)))


def test_cyclic_schedule_of_fast_at():
    s = ScheduleConfig(kind="cyclic", peak_fraction=0.4)  # 0 -> 0.2 at 2/5 of training -> 0
    values = [lr_at(s, 0.2, e, 0, 10, 10) for e in (0, 2, 4, 7, 10)]
    assert values == pytest.approx([0.0, 0.1, 0.2, 0.1, 0.0])


def test_mode_sets_the_training_attack():
    assert TrainingConfig(mode="clean").attack.kind == "none"
    fast = TrainingConfig(mode="fast", attack={"eps": "8/255"})
    assert (fast.attack.kind, fast.attack.steps) == ("fgsm_rs", 1)
    assert fast.attack.step == pytest.approx(1.25 * 8 / 255)


def test_fast_at_step_is_one_and_a_quarter_eps_unless_written_for_fgsm_rs():
    for eps, step in (("8/255", 10 / 255), ("4/255", 5 / 255)):
        attack = TrainingConfig(mode="fast", attack={"eps": eps, "random_start": True}).attack
        assert (attack.kind, attack.steps, attack.step) == ("fgsm_rs", 1, pytest.approx(step))
    # a step equal to 1.25 * eps is no contradiction; one written beside kind: fgsm_rs is the user's choice
    assert TrainingConfig(mode="fast", attack={"step": "10/255", "steps": 1}).attack.step == pytest.approx(10 / 255)
    own = TrainingConfig(mode="fast", attack={"kind": "fgsm_rs", "eps": "8/255", "step": "8/255"}).attack
    assert (own.step, own.steps) == (pytest.approx(8 / 255), 1)  # steps resolved to 1, not the PGD default 10
    # the resolved config round-trips (resume re-validates it)
    again = TrainingConfig.model_validate(TrainingConfig(mode="fast").model_dump(mode="json")).attack
    assert (again.kind, again.step, again.steps) == ("fgsm_rs", pytest.approx(10 / 255), 1)


RECIPE_ATTACK = {"eps": "8/255", "step": "2/255", "steps": 10}  # as every shipped recipe writes it


@pytest.mark.parametrize("stype", ["dense_warmup", "early_bird", "finetune", "rewire", "imp"])
def test_fast_mode_with_a_pgd_attack_block_is_refused_naming_both_keys(stype):
    def problems(attack):
        tree = {"data": {"dataset": "digits"},
                "stages": [{"name": "warm", "type": "dense_warmup", "epochs": 1},
                           {"name": "s", "type": stype, "mode": "fast", "attack": attack}]}
        with pytest.raises(ConfigError) as info:
            validate_tree(tree)
        return "\n".join(info.value.problems)

    text = problems(RECIPE_ATTACK)
    assert "stages[1].mode: 'fast' is FGSM-RS (one step of 1.25*eps), which contradicts attack.steps: 10" in text
    text = problems({"eps": "8/255", "step": "2/255"})
    assert ("stages[1].mode: 'fast' uses the FGSM-RS step 1.25*eps = 10/255, which contradicts attack.step: 2/255"
            in text and "attack.kind: fgsm_rs" in text)


def test_early_bird_fast_at_gets_the_cyclic_reference_schedule():
    from stages.early_bird import EarlyBirdConfig

    cfg = EarlyBirdConfig(name="eb", type="early_bird", mode="fast", epochs=10)
    assert (cfg.schedule.kind, cfg.schedule.peak_fraction, cfg.optimizer.lr) == ("cyclic", 0.4, 0.2)
    # spec §2.1: 0 -> 0.2 at 2/5 of the run -> 0, per iteration
    at = ((0, 0), (2, 0), (4, 0), (5, 2), (7, 0), (9, 5))  # (epoch, step of 5)
    lrs = [lr_at(cfg.schedule, cfg.optimizer.lr, e, s, 5, cfg.epochs) for e, s in at]
    assert lrs == pytest.approx([0.0, 0.1, 0.2, 0.2 * (10 - 5.4) / 6, 0.1, 0.0])
    assert "schedule" not in cfg.model_fields_set  # a default, not the user's
    # what the user writes stays: a schedule, or only a peak lr
    written = EarlyBirdConfig(name="eb", type="early_bird", mode="fast", schedule={"kind": "constant"})
    assert (written.schedule.kind, written.optimizer.lr) == ("constant", 0.1)
    peak = EarlyBirdConfig(name="eb", type="early_bird", mode="fast", optimizer={"lr": 0.1, "weight_decay": 1e-4})
    assert (peak.schedule.kind, peak.optimizer.lr, peak.optimizer.weight_decay) == ("cyclic", 0.1, 1e-4)
    # elsewhere fast AT keeps the stage's default schedule, and validation says so
    tree = {"data": {"dataset": "digits"}, "stages": [{"name": "w", "type": "dense_warmup", "mode": "fast"},
                                                      {"name": "eb", "type": "early_bird", "mode": "fast"}]}
    warned = validate_tree(tree).warnings
    assert [w for w in warned if "mode 'fast'" in w] == [
        "stages[0].schedule: mode 'fast' trains with this stage's default multistep schedule; FGSM-RS fast AT "
        "(Wong et al., spec §2.1) uses schedule: {kind: cyclic, peak_fraction: 0.4} with optimizer.lr: 0.2"]
    # clean and PGD search keep the reference's multistep [50, 150] at lr 0.1
    for mode in ("clean", "pgd"):
        other = EarlyBirdConfig(name="eb", type="early_bird", mode=mode)
        assert (other.schedule.kind, other.schedule.milestones, other.optimizer.lr) == ("multistep", [50, 150], 0.1)


def test_fast_at_stage_runs_and_counts_one_attack_step(write_config, tmp_path):
    cfg = tiny_config(warmup={"mode": "fast", "epochs": 1, "schedule": {"kind": "cyclic"}, "attack": {"eps": "8/255"}})
    cfg["stages"] = cfg["stages"][:1]
    run_dir = tmp_path / "run"
    run_cli("run", str(write_config(cfg)), "--run-dir", str(run_dir), "-q", check=True)
    rec = json.loads((run_dir / "warmup" / "stage.json").read_text())
    assert rec["config"]["attack"]["kind"] == "fgsm_rs" and rec["config"]["attack"]["steps"] == 1
    assert rec["config"]["attack"]["step"] == pytest.approx(10 / 255)
    assert rec["config"]["precision"] == "fp32"  # the resolved numerics are in stage.json
    training = rec["flops"]["training"]
    assert training["attack_steps"] == 1
    f = rec["flops"]["inference"]["sparse_flops"]
    assert training["paper"] == pytest.approx(6 * f * training["images"])  # (1 + 1) x 3F per image
    assert training["corrected"] == pytest.approx(5 * f * training["images"])  # 3F update + 2F attack step
