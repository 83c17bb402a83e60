"""Dynamic sparse training pieces in-process: selection, schedules, presets, exact counts, FB+ decisions, state."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from pydantic import Field, ValidationError

from pipeline.engine.schema import StrictModel
from pipeline.models import create_model
from pipeline.sparsity import MaskSet, prunable_params
from pipeline.sparsity.hooks import MaskHooks
from pipeline.sparsity.dst import (METHODS, DSTState, Layer, MaskEnforcer, RewireHooks, Schedule, build_method,
                                   cubic_density, fbp_signals, resolve_sparsity, select_drop_grow)
from stages.rewire import RewireConfig


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("small_cnn", num_classes=10, in_chans=1, mean=[0.5], std=[0.25])


def setup(method: str, *, density: float = 0.3, steps_per_epoch: int = 5, epochs: int = 12, seed: int = 0,
          model=None, **overrides):
    model = model or tiny_model()
    settings = resolve_sparsity(method, epochs=epochs, **overrides)
    schedule = Schedule.from_settings(settings, steps_per_epoch=steps_per_epoch, epochs=epochs)
    m = build_method(method, settings, density, schedule, seed=seed)
    state = m.start(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    hooks = RewireHooks(m, state)
    hooks.on_start(model, opt)
    return model, opt, hooks


def fake_step(model, opt, hooks, step: int) -> bool:
    """One training step with deterministic random gradients standing in for backward."""
    g = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    hooks.after_backward(step)
    opt.step()
    return hooks.after_step(step)


def check_masked_zero(model, opt, masks: MaskSet) -> None:
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert torch.all(params[name][~m] == 0), name
        buf = opt.state[params[name]].get("momentum_buffer")
        if buf is not None:
            assert torch.all(buf[~m] == 0), name


# -- which entries ------------------------------------------------------------------------------------

def test_drop_smallest_magnitude_and_grow_largest_gradient_including_just_dropped():
    mask = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    w = torch.tensor([0.5, -0.1, 0.3, -0.05, 0, 0, 0, 0])
    g = torch.tensor([0.0, 0.0, 0.0, -9.0, 1.0, -5.0, 0.5, 2.0])
    kept, grown = select_drop_grow(mask, 2, 2, w.abs(), g.abs())
    assert kept.tolist() == [True, False, True, False, False, False, False, False]  # |w| 0.1 and 0.05 dropped
    assert grown.tolist() == [False, False, False, True, False, True, False, False]  # |g| 9 (just dropped) and 5


def test_selection_ties_break_by_index_and_counts_are_exact():
    mask = torch.ones(6, dtype=torch.bool)
    kept, grown = select_drop_grow(mask, 2, 0, torch.ones(6), None)
    assert kept.tolist() == [True, True, True, True, False, False] and not grown.any()
    kept, grown = select_drop_grow(mask, 3, 1, torch.ones(6), torch.zeros(6))
    assert int(kept.sum()) == 3 and grown.tolist() == [False, False, False, True, False, False]
    with pytest.raises(ValueError):
        select_drop_grow(torch.tensor([True, False]), 0, 2, torch.ones(2), torch.ones(2))


def test_apply_zeroes_dropped_and_regrown_weights_and_their_momentum():
    weight = torch.nn.Parameter(torch.tensor([[0.5, -0.1, 0.3, -0.05, 0.0, 0.0]]))
    opt = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    weight.grad = torch.ones_like(weight)
    opt.step()
    with torch.no_grad():
        weight.copy_(torch.tensor([[0.5, -0.1, 0.3, -0.05, 0.0, 0.0]]))
        opt.state[weight]["momentum_buffer"].copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0, 0.0]]))
    masks = MaskSet({"w": torch.tensor([[1, 1, 1, 1, 0, 0]])})
    m = build_method("rigl", resolve_sparsity("rigl"), 0.5,
                     Schedule(steps_per_epoch=1, total_steps=10, update_every=1), seed=0)
    state = DSTState.start(masks)
    layer = Layer("w", 0, weight, masks["w"])
    grads = {"w": torch.tensor([[0.0, 0.0, 0.0, 7.0, 0.0, 3.0]])}
    entry = m.apply_counts(0, state, [layer], opt, grads, {"w": (2, 2)}, event="prune_grow", rate=0.5)
    assert masks["w"].tolist() == [[True, False, True, True, False, True]]
    assert torch.equal(weight.detach(), torch.tensor([[0.5, 0.0, 0.3, 0.0, 0.0, 0.0]]))  # -0.05 regrown from 0
    assert opt.state[weight]["momentum_buffer"].tolist() == [[1.0, 0.0, 3.0, 0.0, 0.0, 0.0]]
    assert (entry["dropped"], entry["grown"], entry["changed"]) == (2, 2, 2)
    assert state.ever_active["w"].tolist() == [[True, True, True, True, False, True]]


# -- when and how much ---------------------------------------------------------------------------------

def test_flying_bird_schedule_reproduces_reference_update_count_and_cosine():
    s = resolve_sparsity("flying_bird", epochs=200)
    sched = Schedule.from_settings(s, steps_per_epoch=352, epochs=200)
    assert len(sched.update_steps()) == 39 + 29
    no_switch = Schedule.from_settings(resolve_sparsity("flying_bird", second_update_every=None, second_after_epoch=None),
                                       steps_per_epoch=352, epochs=200)
    assert len(no_switch.update_steps()) == 78
    assert sched.drop_fraction_at(35199) == pytest.approx(0.2525)  # counter 35200 = epoch 100
    assert sched.drop_fraction_at(70399) == pytest.approx(0.005)
    assert sched.drop_fraction_at(-1) == pytest.approx(0.5)


def test_second_frequency_switch_and_constant_decay():
    sched = Schedule(steps_per_epoch=10, total_steps=30, update_every=3, second_update_every=5, second_after_epoch=1,
                     drop_fraction=0.3, drop_decay="constant")
    assert sched.update_steps() == [2, 5, 8, 11, 14, 17, 24, 29]
    assert sched.drop_fraction_at(24) == 0.3


def test_rigl_stops_at_t_end_and_decays_over_it():
    sched = Schedule.from_settings(resolve_sparsity("rigl"), steps_per_epoch=100, epochs=10)
    assert sched.update_steps() == [99, 199, 299, 399, 499, 599, 699]  # T_end = 750
    assert sched.drop_fraction_at(374) == pytest.approx(0.15)  # 0.3 (1 + cos(pi/2)) / 2
    set_sched = Schedule.from_settings(resolve_sparsity("set"), steps_per_epoch=7, epochs=3)
    assert set_sched.update_steps() == [6, 13, 20]  # once per epoch


def test_cubic_density():
    kw = dict(start=0, end=100, initial=0.8, final=0.5)
    assert cubic_density(0, **kw) == 0.8 and cubic_density(100, **kw) == 0.5 and cubic_density(500, **kw) == 0.5
    assert cubic_density(50, **kw) == pytest.approx(0.5 + 0.3 * 0.125)


# -- presets and config ----------------------------------------------------------------------------------

def test_every_preset_resolves_and_shows_every_value():
    for name, cls in METHODS.items():
        cfg = RewireConfig.model_validate({"name": "r", "type": "rewire", "method": name, "epochs": 10})
        dumped = cfg.model_dump(mode="json")["sparsity"]
        assert None not in (dumped["init"], dumped["update_every"], dumped["grow"])
        assert set(dumped) == set(cls.Settings.model_fields)  # the method's own sub-block, no other's
        assert cls.__doc__ and "20" in cls.__doc__  # names its source paper and year
    fbp = RewireConfig.model_validate({"name": "r", "type": "rewire", "method": "flying_bird_plus", "epochs": 10,
                                       "sparsity": {"grow": "gradient", "adaptive": {"window": 2}}})
    assert fbp.sparsity.grow == "gradient" and fbp.sparsity.adaptive.window == 2
    assert fbp.sparsity.adaptive.start_epoch == 5 and fbp.sparsity.second_after_epoch == 5


@pytest.mark.parametrize("raw, fragment", [
    ({"method": "rigl", "sparsity": {"adaptive": {"window": 2}}}, "adaptive is read only by flying_bird_plus"),
    ({"method": "granet", "density": 0.9}, "initial_density 0.8 is below density 0.9"),
    ({"method": "nope"}, "unknown method 'nope'"),
    ({"method": "set", "sparsity": {"drop_fraction": 1.5}}, "less than or equal to 1"),
    ({"method": "flying_bird_plus", "sparsity": {"adaptive": {"min_density": 0.5, "max_density": 0.2}}}, "min_density"),
])
def test_config_errors_name_the_problem(raw, fragment):
    with pytest.raises(ValidationError) as err:
        RewireConfig.model_validate({"name": "r", "type": "rewire", **raw})
    assert fragment in str(err.value)


@pytest.mark.parametrize("init", ["uniform", "erk", "er", "igq"])
def test_initial_density_exact_and_dense_first_last_frozen(init):
    model, opt, hooks = setup("flying_bird", density=0.25, init=init, dense_first=True, dense_last=True, update_every=1)
    masks, total = hooks.state.masks, sum(m.numel() for m in hooks.state.masks.values())
    assert sum(masks.counts().values()) == round(0.25 * total)
    assert hooks.state.frozen == {"net.features.0.weight", "net.fc.weight"}
    for step in range(6):
        fake_step(model, opt, hooks, step)
    assert all(masks[n].all() for n in hooks.state.frozen)
    assert sum(masks.counts().values()) == round(0.25 * total)


def test_initial_positions_depend_on_seed_and_magnitude_picks_largest():
    _, _, a = setup("set", seed=0)
    _, _, b = setup("set", seed=0)
    _, _, c = setup("set", seed=1)
    assert a.state.masks == b.state.masks and a.state.masks != c.state.masks
    model, _, d = setup("set", init_positions="magnitude")
    w = dict(model.named_parameters())["net.features.6.weight"].detach().abs()
    m = d.state.masks["net.features.6.weight"]
    assert w[m].min() >= w[~m].max() - 1e-12  # weights were zeroed only outside the mask


# -- exact counts over many updates ------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_keeps_exact_counts_zeros_and_its_log_over_many_updates(method):
    """The invariants every registered method must keep, whatever it changes: binary masks whose
    counts are exactly what its log says after each event, zeros (weights and momentum) outside them,
    dense layers untouched, and the exact target density at the end of training."""
    density, steps = 0.3, 60
    model, opt, hooks = setup(method, density=density, update_every=2, update_unit="steps", second_update_every=None,
                              second_after_epoch=None, stop_fraction=None, dense_last=True)
    state, total = hooks.state, sum(m.numel() for m in hooks.state.masks.values())
    sizes = state.masks.sizes()
    counts = state.masks.counts()
    events = 0
    for step in range(steps):
        changed = fake_step(model, opt, hooks, step)
        assert changed == (len(state.log) > events), step
        for entry in state.log[events:]:
            assert entry["step"] == step and entry["event_index"] == events + 1
            events += 1
        now = state.masks.counts()
        if changed:
            last = state.log[-1]
            assert {n: round(d * sizes[n]) for n, d in last["layer_density"].items()} == now
            assert sum(now.values()) - sum(counts.values()) == sum(e["grown"] - e["dropped"] for e in state.log
                                                                   if e["step"] == step)
        else:
            assert now == counts
        counts = now
        assert all(m.dtype == torch.bool for m in state.masks.values())
        assert all(state.masks[n].all() for n in state.frozen) and state.frozen
        check_masked_zero(model, opt, state.masks)
    assert events > 5 and state.changed_total > 0
    assert sum(state.masks.counts().values()) == round(density * total)
    assert state.ever_active_fraction() > state.masks.density()
    grads = [hooks.dense_grad_step(s) for s in range(steps)]
    assert any(grads) == (hooks.method.settings.grow == "gradient")


def test_gradient_growth_uses_the_last_batch_and_starts_at_zero():
    model, opt, hooks = setup("rigl", update_every=1, drop_fraction=0.5, stop_fraction=None)
    name = "net.features.6.weight"
    p = dict(model.named_parameters())[name]
    mask = hooks.state.masks[name]
    inactive = torch.nonzero(~mask.view(-1)).view(-1)[:5]
    for q in model.parameters():
        q.grad = torch.zeros_like(q)
    p.grad.view(-1)[inactive] = 100.0
    hooks.after_backward(0)
    opt.step()
    assert hooks.after_step(0)
    assert mask.view(-1)[inactive].all()
    assert torch.all(p.detach().view(-1)[inactive] == 0)
    assert torch.all(opt.state[p]["momentum_buffer"].view(-1)[inactive] == 0)


def test_mest_rises_above_target_then_prunes_back_exactly():
    # the DST-vs-dense study's variant (10% bound, half an interval); the preset is MEST's own schedule
    # (test_mest_preset_follows_the_mest_scripts), which before the fidelity review this test pinned
    model, opt, hooks = setup("mest", steps_per_epoch=10, epochs=4, update_every=4, update_unit="steps",
                              memory_bound={"bound": 0.1, "prune_after": 0.5, "phases": None})
    targets = hooks.state.masks.counts()
    seen_above = False
    for step in range(40):
        fake_step(model, opt, hooks, step)
        counts = hooks.state.masks.counts()
        if hooks.state.extra["prune_back_at"] is None:
            assert counts == targets, step
        else:
            assert all(counts[n] >= targets[n] for n in counts)
            assert all(counts[n] - targets[n] <= math.floor(0.1 * targets[n]) for n in counts)
            seen_above |= counts != targets
        check_masked_zero(model, opt, hooks.state.masks)
    events = [e["event"] for e in hooks.state.log]
    assert seen_above and events[:2] == ["grow", "prune_back"] and events.count("grow") == events.count("prune_back")
    assert [e["step"] for e in hooks.state.log[:2]] == [3, 5]  # prune-back half an interval later
    assert hooks.state.masks.counts() == targets  # the last grow phase that could not finish was skipped


def test_granet_prunes_gradually_from_denser_start_to_exact_target():
    model, opt, hooks = setup("granet", density=0.3, steps_per_epoch=10, epochs=4, update_every=4,
                              gradual={"initial_density": 0.8, "start_fraction": 0.0, "end_fraction": 0.5})
    total = sum(m.numel() for m in hooks.state.masks.values())
    assert sum(hooks.state.masks.counts().values()) == round(0.8 * total)
    densities = []
    for step in range(40):
        fake_step(model, opt, hooks, step)
        densities.append(hooks.state.masks.density())
        check_masked_zero(model, opt, hooks.state.masks)
    assert all(b <= a for a, b in zip(densities, densities[1:]))
    assert densities[19] == round(0.3 * total) / total  # reached at t1 = step 19 ...
    prunes = [e for e in hooks.state.log if e["event"] == "gradual_prune"]
    assert [e["step"] for e in prunes] == [3, 7, 11, 15, 19]
    assert prunes[1]["target_density"] == pytest.approx(cubic_density(8, start=0, end=20, initial=0.8, final=0.3))
    after = [e for e in hooks.state.log if e["step"] > 19]
    assert after and all(e["event"] == "prune_grow" and e["dropped"] == e["grown"] for e in after)  # ... and kept


# -- Flying Bird+ ---------------------------------------------------------------------------------------------

def test_fbp_signals_on_constructed_histories():
    assert fbp_signals([1, 2, 1, 3, 4], [2.0, 1.9, 1.9, 2.1, 1.8], 4) == (0.75, 0.5)
    assert fbp_signals([9, 1, 2, 1, 3, 4], [0, 2.0, 1.9, 1.9, 2.1, 1.8], 4) == (0.75, 0.5)  # last 5 only
    assert fbp_signals([1, 2, 3], [1, 1, 1], 4) is None


def _fbp_plan(gaps, losses, *, epoch=5, **adaptive):
    defaults = {"start_epoch": 2, "window": 4, "prune_ratio": 0.4, "growth_ratio": 0.05, "prune_threshold": 0.5,
                "grow_threshold": 0.5, "min_density": 0.0, "max_density": 1.0}
    settings = resolve_sparsity("flying_bird_plus", adaptive={**defaults, **adaptive})
    m = build_method("flying_bird_plus", settings, 0.4, Schedule(steps_per_epoch=10, total_steps=100, update_every=10),
                     seed=0)
    mask = torch.zeros(100, dtype=torch.bool)
    mask[:40] = True
    layer = Layer("w", 0, torch.zeros(100), mask)
    state = DSTState.start(MaskSet({"w": mask}), extra={"gap_history": list(gaps), "loss_history": list(losses)})
    return m.plan(epoch * 10, state, [layer], {"w": 40}, 0.5)


def test_fbp_decisions_on_constructed_histories():
    rising_gap, flat_loss = [1, 2, 1, 3, 4], [2.0, 1.9, 1.9, 2.1, 1.8]
    counts, info = _fbp_plan(rising_gap, flat_loss)
    # k = ceil(0.5 * 40) = 20; extra prune ceil(0.5 * 0.4 * 40) = 8; regrowth round(1.05 * 20) = 21
    assert counts == {"w": (28, 21)} and info["extra_pruned"] == 8 and info["extra_grown"] == 1
    assert info["prune_signal"] == 0.75 and info["grow_signal"] == 0.5
    counts, info = _fbp_plan([4, 3, 2, 1, 0], [2, 1.5, 1.2, 1.1, 1.0])  # gap shrinking, loss falling
    assert counts == {"w": (20, 20)} and info["adaptive"] is True
    counts, info = _fbp_plan(rising_gap, flat_loss, epoch=1)  # before start_epoch
    assert counts == {"w": (20, 20)} and info["adaptive"] is False
    counts, _ = _fbp_plan(rising_gap, flat_loss, prune_threshold=0.8, grow_threshold=0.6)  # thresholds
    assert counts == {"w": (20, 20)}
    counts, info = _fbp_plan(rising_gap, flat_loss, min_density=0.35, max_density=0.405)  # floor 35, ceiling 40
    assert counts == {"w": (25, 20)} and info["extra_pruned"] == 5 and info["extra_grown"] == 0


def test_fbp_respects_density_floor_over_many_updates():
    model, opt, hooks = setup("flying_bird_plus", density=0.3, update_every=2, second_update_every=None,
                              second_after_epoch=None, adaptive={"start_epoch": 0, "window": 1, "min_density": 0.25})
    total = sum(m.numel() for m in hooks.state.masks.values())
    hooks.state.extra.update(gap_history=[0.0, 1.0], loss_history=[1.0, 0.5])  # gap rising, loss falling
    previous = hooks.state.masks.counts()
    for step in range(40):
        if fake_step(model, opt, hooks, step):
            entry = hooks.state.log[-1]
            now = hooks.state.masks.counts()
            assert sum(previous.values()) - sum(now.values()) == entry["extra_pruned"]
            assert now == hooks.state.targets
            previous = now
    assert hooks.state.log[0]["extra_pruned"] > 0
    assert math.ceil(0.25 * total) <= sum(previous.values()) < round(0.3 * total)


# -- state ------------------------------------------------------------------------------------------------

def test_rewire_and_fixed_mask_hooks_enforce_identically():
    model, opt, hooks = setup("set")
    twin, twin_opt = copy.deepcopy(model), None
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    twin_opt.load_state_dict(opt.state_dict())
    hooks.enforcer()
    twin_hooks = MaskHooks(hooks.state.masks.clone())
    twin_hooks.on_start(twin, twin_opt)  # a fixed mask's hooks put it in force the same way
    for (n, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        assert torch.equal(a, b), n
        assert torch.equal(opt.state[a]["momentum_buffer"], twin_opt.state[b]["momentum_buffer"]), n
    assert MaskEnforcer([(torch.ones(2), torch.ones(2, dtype=torch.bool))])._params == []  # dense: skipped


def _epochs(model, opt, hooks, steps) -> list[bool]:
    changed = []
    for step in steps:
        changed.append(fake_step(model, opt, hooks, step))
        if step % 5 == 4:  # an epoch row with a rising gap and a falling loss
            hooks.end_epoch(step // 5, {"train_acc": 50.0 + step, "val_ra": 30.0, "val_robust_loss": 2.0 - step / 100})
    return changed


def test_state_round_trip_and_resumed_run_continues_identically():
    kw = dict(update_every=2, second_update_every=None, second_after_epoch=None, adaptive={"start_epoch": 0, "window": 1})
    model, opt, hooks = setup("flying_bird_plus", **kw)
    _epochs(model, opt, hooks, range(12))
    buf = io.BytesIO()
    torch.save({"hooks": hooks.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    model2, opt2, hooks2 = setup("flying_bird_plus", **kw)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    hooks2.load_state_dict(saved["hooks"])
    assert hooks2.state.log == hooks.state.log and hooks2.state.extra == hooks.state.extra
    assert len(hooks.state.extra["gap_history"]) == 2  # fed by the method's own end_epoch
    assert hooks2.state.masks == hooks.state.masks and hooks2.densities() == hooks.densities()
    assert _epochs(model, opt, hooks, range(12, 30)) == _epochs(model2, opt2, hooks2, range(12, 30))
    assert hooks.state.masks == hooks2.state.masks and hooks.state.ever_active == hooks2.state.ever_active
    assert hooks.state.log == hooks2.state.log and hooks.state.targets == hooks2.state.targets
    assert any(e["adaptive"] and e["extra_pruned"] > 0 for e in hooks.state.log)
    for (n, a), (_, b) in zip(model.named_parameters(), model2.named_parameters()):
        assert torch.equal(a, b), n


def test_prunable_layers_match_fb_reference_scope():
    model = create_model("preact_resnet18", num_classes=10, in_chans=3, mean=[0.5] * 3, std=[0.25] * 3)
    params = prunable_params(model)
    assert len(params) == 21 and sum(p.numel() for p in params.values()) == 11_164_352  # spec §7


# -- the seam: a method with its own knobs and state touches no shared class --------------------------------

class ToyKnobs(StrictModel):  # at module level: the test module's annotations are strings
    every: int = Field(ge=1)


def test_a_new_method_brings_its_own_settings_state_and_epoch_signals():
    from pipeline.sparsity.dst import DynamicSparsity, SparsityConfig, register

    @register("toy_counter")
    class Toy(DynamicSparsity):
        """Toy (a test, 2026): SET whose epoch rows count the evaluated epochs it has seen."""

        class Settings(SparsityConfig):
            toy: ToyKnobs

        example = {"toy": {"every": 2}}

        @classmethod
        def preset(cls, epochs):
            return {**METHODS["set"].preset(epochs), "toy": {"every": 1}}

        def initial_extra(self):
            return {"seen": 0, "trace": torch.zeros(3)}

        def end_epoch(self, state, epoch, row):
            state.extra["seen"] += 1
            state.extra["trace"][epoch % 3] += row.get("train_acc", 0.0)
            return {"toy_seen": state.extra["seen"]}

    try:
        cfg = RewireConfig.model_validate({"name": "r", "type": "rewire", "method": "toy_counter", "epochs": 4,
                                           "sparsity": {"toy": {"every": 3}}})
        assert cfg.model_dump(mode="json")["sparsity"]["toy"] == {"every": 3} and cfg.sparsity.update_unit == "epochs"
        with pytest.raises(ValidationError, match="toy is read only by toy_counter, not by rigl"):
            RewireConfig.model_validate({"name": "r", "type": "rewire", "method": "rigl", "sparsity": {"toy": {"every": 1}}})
        model, opt, hooks = setup("toy_counter", toy={"every": 2})
        row = {"train_acc": 5.0}
        hooks.end_epoch(0, row)
        assert row["toy_seen"] == 1 and hooks.state.extra["trace"].tolist() == [5.0, 0.0, 0.0]
        buf = io.BytesIO()
        torch.save(hooks.state_dict(), buf)
        buf.seek(0)
        _, _, fresh = setup("toy_counter", toy={"every": 2})
        fresh.load_state_dict(torch.load(buf, weights_only=True))
        assert fresh.state.extra["seen"] == 1 and torch.equal(fresh.state.extra["trace"], hooks.state.extra["trace"])
        hooks.state.extra["trace"][0] = 9.0
        assert fresh.state.extra["trace"][0] == 5.0  # restored as a copy, not shared
    finally:
        METHODS._classes.pop("toy_counter", None)
