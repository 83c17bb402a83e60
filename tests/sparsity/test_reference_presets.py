"""Each preset's counts against a reference answer worked out by hand (issue 10 item 5): RigL's drop count,
GraNet's end of pruning, MEST's mutation phases, SET's allocation; the IMP stage's refusal without the
reference values, early_bird -> finetune's milestones and the Robust Bird script's summary."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.engine.config import validate_tree
from pipeline.engine.errors import ConfigError
from pipeline.metrics.evaluation import rb_script_summary, summarize_history
from pipeline.sparsity.allocation import er, erk, erk_uncapped, get_allocator
from pipeline.sparsity import MaskSet
from pipeline.sparsity.dst import DSTState, Layer, RewireHooks, Schedule, build_method, resolve_sparsity

from tests.conftest import tiny_config


def _method(name: str, *, density: float = 0.3, steps_per_epoch: int = 10, epochs: int = 160, **overrides):
    settings = resolve_sparsity(name, epochs=epochs, **overrides)
    schedule = Schedule.from_settings(settings, steps_per_epoch=steps_per_epoch, epochs=epochs)
    return build_method(name, settings, density, schedule, seed=0)


def _plan(method, active: int, size: int, rate: float) -> dict:
    mask = torch.zeros(size, dtype=torch.bool)
    mask[:active] = True
    layer = Layer("w", 0, torch.zeros(size), mask)
    state = DSTState.start(MaskSet({"w": mask}), extra=method.initial_extra())
    counts, _ = method.plan(0, state, [layer], {"w": active}, rate)
    return counts


# -- RigL: floor(n_active * fraction), as google-research/rigl's int() -----------------------------------

def test_rigl_drops_the_floor_of_active_times_fraction():
    rigl, fb = _method("rigl"), _method("flying_bird")
    assert rigl.settings.drop_count == "floor" and fb.settings.drop_count == "ceil"
    assert _plan(rigl, 37, 100, 0.1) == {"w": (3, 3)}  # 3.7 -> 3
    assert _plan(fb, 37, 100, 0.1) == {"w": (4, 4)}    # Flying Bird (spec §3.4): ceil -> 4


def test_rigl_makes_no_forced_swap_near_t_end():
    # 1000 steps, an update every 100, T_end = 750: alpha at counter 700 = 0.15 (1 + cos(pi 700/750))
    rigl = _method("rigl", steps_per_epoch=100, epochs=10)
    alpha = rigl.schedule.drop_fraction_at(699)
    assert alpha == pytest.approx(0.15 * (1 - math.cos(math.pi / 15)))  # = 0.0032778
    assert _plan(rigl, 200, 400, alpha) == {"w": (0, 0)}  # 0.656 weights: none (ceil would swap one)
    assert _plan(rigl, 400, 800, alpha) == {"w": (1, 1)}  # 1.311 -> 1
    assert rigl.schedule.update_steps() == [99, 199, 299, 399, 499, 599, 699]


# -- GraNet: the last pruning step at 110 of 160 epochs ----------------------------------------------------

def test_granet_reaches_its_target_at_epoch_110_of_160():
    g = _method("granet", steps_per_epoch=10, epochs=160)  # 1600 steps, updates every 1000
    assert g.settings.gradual.end_fraction == 0.6875
    assert (g.t0, g.t1) == (0, 1100)
    prune_steps = [s for s in range(1600) if g.prunes_at(s)]
    assert prune_steps == [999, 1099]  # the regular update at counter 1000, and t1 itself
    g200 = _method("granet", steps_per_epoch=352, epochs=200)  # 70400 steps: round(0.6875 * 70400)
    assert g200.t1 == 48400


# -- MEST: the mutation phases of MEST's scripts -----------------------------------------------------------

class _TwoLayer(nn.Module):
    def __init__(self, conv=(4, 2, 3, 3), fc=(10, 16)):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(conv[1], conv[0], conv[2], bias=False)
        self.fc = nn.Linear(fc[1], fc[0], bias=False)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


def test_mest_preset_follows_the_mest_scripts():
    # 160 epochs of 1 step: an update every 5 epochs; grow 5% of each layer, 2.5% from epoch 90, none from 120
    m = _method("mest", density=0.25, steps_per_epoch=1, epochs=160)
    s = m.settings
    assert (s.update_every, s.update_unit, s.memory_bound.bound, s.memory_bound.prune_after) == (5, "epochs", None, 1.0)
    assert m.growth(4, target=40, size=160) == (8, 0.05)      # floor(0.05 * 160 + 0.5)
    assert m.growth(89, target=40, size=160) == (4, 0.025)    # counter 90 = 56.25%: 2.5%
    assert m.growth(119, target=40, size=160)[0] == 0         # counter 120 = 75%: no mutation
    model = _TwoLayer()
    state = m.start(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hooks = RewireHooks(m, state)
    hooks.on_start(model, opt)
    targets = state.masks.counts()
    for step in range(160):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
        hooks.after_backward(step)
        opt.step()
        hooks.after_step(step)
    grows = [e for e in state.log if e["event"] == "grow"]
    backs = [e for e in state.log if e["event"] == "prune_back"]
    sizes = state.masks.sizes()
    assert [e["step"] for e in grows] == list(range(4, 119, 5))  # 23 mutations, none from epoch 120 on
    assert [e["step"] for e in backs] == list(range(9, 120, 5))  # each pruned back at the next update
    early = {n: math.floor(0.05 * sizes[n] + 0.5) for n in sizes}   # conv 72 -> 4, fc 160 -> 8
    late = {n: math.floor(0.025 * sizes[n] + 0.5) for n in sizes}   # conv 72 -> 2, fc 160 -> 4
    assert grows[0]["grown"] == sum(early.values()) == 12 and grows[-1]["grown"] == sum(late.values()) == 6
    assert state.masks.counts() == targets


def test_mest_study_variant_is_one_block_away():
    m = _method("mest", update_every=1000, update_unit="steps",
                memory_bound={"bound": 0.1, "prune_after": 0.5, "phases": None})
    assert m.growth(999, target=100, size=1000) == (10, m.schedule.drop_fraction_at(999))  # capped at 10%


# -- SET: sparselearning's 'ER' counts the kernel (= ERK) ---------------------------------------------------

SHAPES = {"conv": (4, 2, 3, 3), "fc": (10, 16)}  # 72 and 160 weights


def test_set_preset_allocates_as_sparselearning_er():
    # density 0.5: 116 weights; eps = 116 / (sum(conv shape) + sum(fc shape)) = 116 / (12 + 26)
    # conv 12 eps = 36.63, fc 26 eps = 79.37 -> floors 36 + 79, the one left to the larger remainder (conv)
    assert resolve_sparsity("set").init == "erk"
    assert get_allocator("erk")(SHAPES, 0.5) == {"conv": 37, "fc": 79}
    assert erk_uncapped(SHAPES, 0.5) == {"conv": 37, "fc": 79}  # no layer fills up: the same
    # Mocanu's kernel-ignoring rule: conv (4 + 2) / 8 per weight -> quota 54 eps vs fc 26 eps, conv capped
    assert er(SHAPES, 0.5) == {"conv": 72, "fc": 44}
    m = _method("set", density=0.5, epochs=10)
    assert m.initial_masks(_TwoLayer()).counts() == {"conv.weight": 37, "fc.weight": 79}


def test_erk_uncapped_loses_the_excess_of_a_filled_layer_as_the_reference():
    shapes = {"conv": (4, 1, 3, 3), "fc": (10, 64)}  # 36 and 640 weights, budget 338 at density 0.5
    # eps = 338 / (11 + 74) = 3.976: conv quota 43.7 > 36 -> dense, excess lost; fc 294.2 -> 294
    assert erk_uncapped(shapes, 0.5) == {"conv": 36, "fc": 294}
    assert erk(shapes, 0.5) == {"conv": 36, "fc": 302}  # ours: eps re-solved, exact total


# -- IMP: no silent non-reference defaults -------------------------------------------------------------------

def _imp_tree(**imp):
    cfg = tiny_config()
    cfg["stages"] = [cfg["stages"][0], {"name": "imp", "type": "imp", "input": "warmup", "epochs": 1, **imp}]
    return cfg


def test_imp_refuses_to_run_without_lr_batch_and_attack():
    with pytest.raises(ConfigError) as err:
        validate_tree(_imp_tree(mode="pgd"))
    text = "\n".join(err.value.problems)
    assert "stages[1]: optimizer.lr, batch_size, attack.steps, attack.step: required for an imp stage" in text
    assert "lr 0.0005 at batch 2048 with PGD-3, eps 8/255, step 16/765" in text
    with pytest.raises(ConfigError) as err:
        validate_tree(_imp_tree(mode="clean", batch_size=64))
    assert "optimizer.lr: required for an imp stage" in "\n".join(err.value.problems)
    ok = validate_tree(_imp_tree(mode="pgd", batch_size=64, optimizer={"lr": 0.01},
                                 attack={"steps": 3, "step": "16/765"}))
    imp = ok.stage("imp")
    assert (imp.optimizer.lr, imp.optimizer.weight_decay, imp.attack.steps) == (0.01, 1e-4, 3)
    assert imp.attack.step == pytest.approx(16 / 765)


# -- early_bird -> finetune: Robust Bird's stage-2 milestones -------------------------------------------------

def _chain(input_type: str, **finetune):
    cfg = tiny_config()
    first = {"name": "search", "type": input_type, "epochs": 2, "mode": "clean", "batch_size": 64,
             "max_steps_per_epoch": 2}
    cfg["stages"] = [first, {"name": "ft", "type": "finetune", "input": "search", "mode": "pgd", "epochs": 200,
                             **finetune}]
    return validate_tree(cfg)


def test_finetune_after_early_bird_gets_rb_stage2_milestones():
    assert _chain("early_bird").stage("ft").schedule.milestones == [50, 150]
    assert _chain("dense_warmup").stage("ft").schedule.milestones == [100, 150]  # main_adv's default
    written = _chain("early_bird", schedule={"milestones": [30, 60]}).stage("ft").schedule
    assert written.milestones == [30, 60]
    cosine = _chain("early_bird", schedule={"kind": "cosine"}).stage("ft").schedule
    assert cosine.kind == "cosine" and cosine.milestones == [100, 150]
    short = _chain("early_bird", epochs=100, schedule={"kind": "multistep"})  # [50, 150] with 100 epochs: a warning
    assert short.stage("ft").schedule.milestones == [50, 150]
    assert any("milestones: [150]" in w and "default milestones" in w for w in short.warnings)
    resolved = _chain("early_bird").resolved()["stages"][1]["schedule"]
    assert resolved["milestones"] == [50, 150]


# -- Robust Bird script summary (spec §1.1) ------------------------------------------------------------------

HISTORY = [
    {"epoch": 1, "train_acc": 40.0, "val_ra": 30.0, "test_ra": 31.0, "test_sa": 70.0},
    {"epoch": 2, "train_acc": 55.0, "val_ra": 38.0, "test_ra": 39.0, "test_sa": 78.0},
    {"epoch": 3, "train_acc": 70.0, "val_ra": 36.0, "test_ra": 40.0, "test_sa": 80.0},
    {"epoch": 4, "train_acc": 65.0, "val_ra": 35.0, "test_ra": 37.0, "test_sa": 85.0},
]


def test_rb_script_summary_is_test_selected_with_max_train_acc_gap():
    rb = rb_script_summary(HISTORY)
    assert rb == {"RA_best": 40.0, "RA_final": 37.0, "RA_diff": 3.0, "SA_best": 85.0, "SA_final": 85.0,
                  "SA_diff": 0.0, "gap_best": 70.0 - 40.0, "gap_final": 65.0 - 37.0, "evaluated_epochs": 4}
    main = summarize_history(HISTORY)  # the headline: val-selected (epoch 2), SA of that epoch
    assert (main["RA_best"], main["SA_best"], main["best_epoch"]) == (39.0, 78.0, 2)
    # selecting on test RA alone gives RB's RA_best but not its SA_best (SA of epoch 3, not the max)
    test_selected = summarize_history(HISTORY, "test_ra")
    assert (test_selected["RA_best"], test_selected["SA_best"]) == (40.0, 80.0)


# -- the reference rules kept one option away --------------------------------------------------------------

def test_threshold_rule_is_the_robust_bird_detection_mask():
    from pipeline.sparsity import global_magnitude_masks

    params = {"a": torch.tensor([0.1, 0.5, 0.3, 0.9]), "b": torch.tensor([0.2, -0.7, 0.4, 0.6])}
    # density 0.5 of 8: sorted |w| 0.1 .2 .3 .4 .5 .6 .7 .9, index floor(8 * 0.5) = 4 -> 0.5; keep > 0.5
    ref = global_magnitude_masks(params, 0.5, rule="threshold")
    assert ref["a"].tolist() == [False, False, False, True] and ref["b"].tolist() == [False, True, False, True]
    ours = global_magnitude_masks(params, 0.5)  # exact top-4: 0.5 kept too
    assert ours["a"].tolist() == [False, True, False, True] and ours["b"].tolist() == [False, True, False, True]


def test_igq_int_rounds_each_layer_as_the_reference():
    from pipeline.sparsity.allocation import igq, igq_int

    shapes = {"a": (10,), "b": (100,), "c": (7, 3)}  # 131 weights, 66 kept at density 0.5
    sizes = {"a": 10, "b": 100, "c": 21}
    lo, hi = 0.0, 1.0  # F with sum N / (1 + F N) = 66, by my own bisection
    for _ in range(100):
        f = (lo + hi) / 2
        lo, hi = (f, hi) if sum(n / (1 + f * n) for n in sizes.values()) > 66 else (lo, f)
    quotas = {k: n / (1 + f * n) for k, n in sizes.items()}
    assert igq_int(shapes, 0.5) == {k: n - int((1 - quotas[k] / n) * n) for k, n in sizes.items()}
    assert sum(igq(shapes, 0.5).values()) == 66


def test_bernoulli_growth_matches_the_count_only_in_expectation():
    fb = _method("flying_bird", grow_count="bernoulli")
    size, grown = 2000, []
    for step in range(20):
        mask = torch.zeros(size, dtype=torch.bool)
        mask[:600] = True
        layer = Layer("w", 0, torch.randn(size) * mask, mask)
        state = DSTState.start(MaskSet({"w": mask}), extra={})
        entry = fb.apply_counts(step, state, [layer], None, None, {"w": (100, 100)}, event="prune_grow", rate=None)
        assert entry["dropped"] == 100 and int(mask.sum()) == 500 + entry["grown"]
        grown.append(entry["grown"])
    assert len(set(grown)) > 1 and abs(sum(grown) / len(grown) - 100) < 10  # p = 100 / 1500 per free entry
    with pytest.raises(Exception, match="needs grow: random"):
        resolve_sparsity("rigl", grow_count="bernoulli")


def test_cli_evaluate_reports_the_rb_script_summary_when_asked(tmp_path):
    import json

    import yaml

    from tests.conftest import run_cli

    cfg = tiny_config()
    warmup = {**cfg["stages"][0], "epochs": 2, "max_steps_per_epoch": 2, "select": "best"}
    cfg["stages"] = [warmup, {"name": "evaluate", "type": "evaluate", "input": "warmup", "rb_script_metrics": True,
                              "attack": {"steps": 1}, "train_limit": 16, "val_limit": 16, "test_limit": 16,
                              "checkpoints": "selected"}]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_cli("run", str(path), "--run-dir", str(tmp_path / "run"), "-q", check=True)
    history = [json.loads(line) for line in (tmp_path / "run" / "warmup" / "history.jsonl").read_text().splitlines()]
    metrics = json.loads((tmp_path / "run" / "evaluate" / "stage.json").read_text())["metrics"]
    assert metrics["rb_script"] == rb_script_summary(history)
    assert metrics["rb_script"]["RA_best"] == max(r["test_ra"] for r in history)
    assert metrics["history_RA_best"] == summarize_history(history)["RA_best"]  # the headline stays val-selected
    run_cli("report", str(tmp_path / "run"), check=True)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Robust Bird script's definitions (per-epoch history, 2 evaluated epochs" in report
    assert f"| RA best: max test RA over epochs | {max(r['test_ra'] for r in history):.2f} |" in report
