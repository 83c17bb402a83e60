"""Sparsity core: allocators, exact selectors, masks kept in force, magnitude/random masks, early bird, nni."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.engine.errors import ConfigError
from pipeline.sparsity import (
    ALLOCATORS, EarlyBirdDetector, MaskSet, derived_generator, early_bird_distance, erk,
    get_allocator, global_magnitude_masks, igq, imp_round_density, prunable_params,
    random_mask, topk_mask, uniform)
from pipeline.sparsity.criteria import CRITERIA
from pipeline.sparsity.hooks import MaskHooks

torch.set_num_threads(1)


def preact18_shapes(num_classes: int = 10) -> dict[str, tuple[int, ...]]:
    """The 21 prunable weight shapes of PreActResNet-18 (spec §7), in module order."""
    shapes = [(64, 3, 3, 3)]
    for cin, cout, stride in [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]:
        shapes += [(cout, cin, 3, 3), (cout, cout, 3, 3)]
        if stride != 1 or cin != cout:
            shapes.append((cout, cin, 1, 1))
        shapes += [(cout, cout, 3, 3), (cout, cout, 3, 3)]
    shapes.append((num_classes, 512))
    return {f"layer{i:02d}.weight": s for i, s in enumerate(shapes)}


class TinyNet(nn.Module):
    def __init__(self, named: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 6)
        self.fc = nn.Linear(6, 4)
        if named:
            self.first_layer_name, self.classifier_name = "conv2", "head"

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x)).mean((2, 3))
        return self.fc(torch.relu(self.head(x)))


def _sizes(shapes):
    return {n: math.prod(s) for n, s in shapes.items()}


# --------------------------------------------------------------------------- allocation

SMALL_SHAPES = {"a": (7, 3, 3, 3), "b": (16, 7, 3, 3), "c": (16, 16, 1, 1), "d": (5, 16)}


@pytest.mark.parametrize("name", sorted(ALLOCATORS))
@pytest.mark.parametrize("shapes", [preact18_shapes(), SMALL_SHAPES], ids=["preact18", "small"])
def test_every_allocator_hits_the_global_count_exactly(name, shapes):
    allocate, sizes = ALLOCATORS[name], _sizes(shapes)
    total = sum(sizes.values())
    first, last = next(iter(shapes)), list(shapes)[-1]
    for density in (0.0, 0.013, 0.05, 0.2, 0.5, 0.77, 1.0):
        for dense in (frozenset(), frozenset({first, last})):
            if round(density * total) < sum(sizes[n] for n in dense):
                with pytest.raises(ValueError, match="dense"):
                    allocate(shapes, density, dense=dense)
                continue
            counts = allocate(shapes, density, dense=dense)
            assert list(counts) == list(shapes)
            if name == "erk_uncapped":  # the reference rule: a layer it fills loses its excess
                assert sum(counts.values()) <= round(density * total), (density, dense)
            elif name == "igq_int":  # the reference's per-layer int(): within one weight per layer
                assert abs(sum(counts.values()) - round(density * total)) <= len(shapes), (density, dense)
            else:
                assert sum(counts.values()) == round(density * total), (density, dense)
            assert all(isinstance(c, int) and 0 <= c <= sizes[n] for n, c in counts.items())
            assert all(counts[n] == sizes[n] for n in dense)


def test_uniform_spreads_the_remainder_by_largest_remainder_then_layer_order():
    # 3 layers of 3 at density 0.5: budget round(4.5) = 4 (Python rounds half to even); quotas 4/3 each,
    # so the single leftover weight goes to the first layer (all remainders tie).
    assert uniform({"a": (3,), "b": (3,), "c": (3,)}, 0.5) == {"a": 2, "b": 1, "c": 1}
    # quotas 0.4*(5, 10, 2) = (2, 4, 0.8): the leftover goes to "c", the largest remainder.
    assert uniform({"a": (5,), "b": (10,), "c": (2,)}, 0.4) == {"a": 2, "b": 4, "c": 1}
    # the dense layer is kept and the others absorb the budget: 0.5 * 40 = 20 - 10 = 10 over 30 weights
    assert uniform({"a": (10,), "b": (10,), "c": (20,)}, 0.5, dense={"a"}) == {"a": 10, "b": 3, "c": 7}


def test_erk_caps_a_layer_that_would_exceed_density_one():
    # score a = (2+2)/4 = 1, b = 200/10000 = 0.02. Budget 5002: eps = 5002/(4+200) > 1 for "a", so "a" is
    # capped dense (4) and "b" gets the other 4998.
    assert erk({"a": (2, 2), "b": (100, 100)}, 0.5) == {"a": 4, "b": 4998}


def test_igq_hand_case():
    # F = 0.01 gives 100/(1+1) = 50 and 10000/(1+100) = 99.0099; with a budget of 149 the bisection
    # lands just above 0.01 (49.99.., 99.00..), and largest remainder gives 50 + 99.
    assert igq({"a": (100,), "b": (100, 100)}, 149 / 10100) == {"a": 50, "b": 99}


@pytest.mark.parametrize("allocate", [erk, igq])
def test_erk_and_igq_keep_first_and_last_denser_than_the_middle(allocate):
    shapes = preact18_shapes()
    counts, sizes = allocate(shapes, 0.2), _sizes(shapes)
    dens = {n: counts[n] / sizes[n] for n in shapes}
    names = list(shapes)
    middle_3x3 = [n for n in names[1:-1] if shapes[n][2:] == (3, 3)]
    mean_middle = sum(dens[n] for n in middle_3x3) / len(middle_3x3)
    for end in (names[0], names[-1]):  # ERK caps layer1 dense too, hence >= for the max
        assert dens[end] >= max(dens[n] for n in middle_3x3) and dens[end] > mean_middle + 0.3


def test_igq_on_preact18_matches_the_reference_numbers():
    shapes = preact18_shapes()
    counts, sizes = igq(shapes, 0.2), _sizes(shapes)
    dens = [counts[n] / sizes[n] for n in shapes]
    assert dens[0] == pytest.approx(0.994, abs=0.002)  # stem (spec §3.2)
    assert dens[-1] == pytest.approx(0.98, abs=0.003)  # fc
    assert all(d == pytest.approx(0.879, abs=0.002) for d in dens[1:5])  # layer1 convs
    assert 0.10 <= min(dens) and max(dens[15:20]) <= 0.7  # layer4


def test_get_allocator_lists_valid_names():
    assert get_allocator("igq") is igq
    with pytest.raises(ConfigError, match="erk, erk_uncapped, igq, igq_int, uniform"):
        get_allocator("magic", where="stages.rewire.init")


def test_allocator_rejects_unknown_dense_layer_and_bad_density():
    with pytest.raises(ValueError, match="zzz"):
        uniform(SMALL_SHAPES, 0.5, dense={"zzz"})
    with pytest.raises(ValueError, match="density"):
        igq(SMALL_SHAPES, 1.5)


# --------------------------------------------------------------------------- exact selection

def test_topk_mask_breaks_ties_by_lower_flat_index():
    scores = torch.tensor([[1.0, 3.0, 3.0], [3.0, 0.0, 3.0]])
    assert topk_mask(scores, 2).tolist() == [[False, True, True], [False, False, False]]
    assert topk_mask(scores, 3).tolist() == [[False, True, True], [True, False, False]]
    assert topk_mask(scores, 5).tolist() == [[True, True, True], [True, False, True]]
    assert not topk_mask(scores, 0).any() and topk_mask(scores, 6).all()
    assert topk_mask(torch.zeros(50), 7).nonzero().view(-1).tolist() == list(range(7))


def test_topk_mask_equals_sorting_without_ties_and_rejects_bad_input():
    scores = torch.randn(37, 11, generator=torch.Generator().manual_seed(3))
    mask = topk_mask(scores, 100)
    assert int(mask.sum()) == 100
    expected = torch.zeros(scores.numel(), dtype=torch.bool)
    expected[scores.view(-1).argsort(descending=True)[:100]] = True
    assert torch.equal(mask.view(-1), expected)
    with pytest.raises(ValueError):
        topk_mask(scores, 408)
    with pytest.raises(ValueError, match="NaN"):
        topk_mask(torch.tensor([1.0, float("nan"), 2.0]), 1)


def test_random_mask_exact_reproducible_and_uniform():
    masks = [random_mask((4, 5), 7, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert all(int(m.sum()) == 7 and m.shape == (4, 5) for m in masks)
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])
    gen = torch.Generator().manual_seed(5)
    freq = torch.stack([random_mask((10,), 3, gen) for _ in range(2000)]).float().mean(0)
    assert torch.allclose(freq, torch.full((10,), 0.3), atol=0.05)


def test_derived_generator_depends_only_on_its_keys():
    draw = lambda *keys: torch.rand(4, generator=derived_generator(*keys)).tolist()  # noqa: E731
    assert draw(1, 900, "layer3") == draw(1, 900, "layer3")
    assert draw(1, 900, "layer3") != draw(1, 1800, "layer3") != draw(2, 900, "layer3")


# --------------------------------------------------------------------------- masks

def test_prunable_params_picks_conv_and_linear_weights_only():
    model = TinyNet()
    assert list(prunable_params(model)) == ["conv1.weight", "conv2.weight", "head.weight", "fc.weight"]
    assert list(prunable_params(model, include=("conv",))) == ["conv1.weight", "conv2.weight"]
    assert list(prunable_params(model, dense_first=True, dense_last=True)) == ["conv2.weight", "head.weight"]
    named = TinyNet(named=True)  # first_layer_name / classifier_name win over module order
    assert list(prunable_params(named, dense_first=True, dense_last=True)) == ["conv1.weight", "fc.weight"]
    assert prunable_params(model)["conv1.weight"] is model.conv1.weight
    with pytest.raises(ValueError, match="bn"):
        prunable_params(model, include=("bn",))


def test_maskset_statistics_state_dict_and_distance():
    masks = MaskSet({"a": torch.tensor([True, False, True, True]), "b": torch.tensor([[1, 0], [0, 0]])})
    assert masks["b"].dtype == torch.bool
    assert masks.counts() == {"a": 3, "b": 1} and masks.sizes() == {"a": 4, "b": 4}
    assert masks.density() == 0.5 and masks.layer_densities() == {"a": 0.75, "b": 0.25}
    other = masks.clone()
    other["a"] = torch.tensor([False, False, True, True])
    assert masks.hamming_distance(other) == pytest.approx(1 / 8)
    assert early_bird_distance(other, masks) == pytest.approx(1 / 8)

    fresh = MaskSet({"a": torch.zeros(4, dtype=torch.bool), "b": torch.zeros(2, 2, dtype=torch.bool)})
    fresh.load_state_dict(masks.state_dict())
    assert fresh.hamming_distance(masks) == 0.0 and fresh.to("cpu") is fresh
    assert fresh == masks and fresh != other and masks != MaskSet({"a": masks["a"]})
    with pytest.raises(ValueError, match="'b'"):
        fresh.load_state_dict({"a": torch.ones(4, dtype=torch.bool), "b": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="missing"):
        fresh.load_state_dict({"a": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="0 and 1"):
        MaskSet({"a": torch.tensor([0.5, 1.0])})


def test_apply_rejects_masks_that_do_not_fit_the_model():
    model = TinyNet()
    with pytest.raises(ValueError, match="nope.weight"):
        MaskSet({"nope.weight": torch.ones(3, dtype=torch.bool)}).apply_(model)
    with pytest.raises(ValueError, match="fc.weight"):
        MaskSet({"fc.weight": torch.ones(3, dtype=torch.bool)}).apply_(model)


def _train(model, optimizer, steps, gen, *, grads=None):
    for _ in range(steps):
        x = torch.randn(4, 3, 6, 6, generator=gen)
        y = torch.randint(0, 4, (4,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if grads is not None:
            grads.append({n: p.grad.clone() for n, p in prunable_params(model).items()})
        optimizer.step()


def keep_in_force(model, masks, optimizer) -> MaskHooks:
    """MaskHooks started on `model`: its enforcer is built once here, as the training loop does."""
    hooks = MaskHooks(masks)
    hooks.on_start(model, optimizer)
    return hooks


def test_masked_weights_and_momentum_stay_exactly_zero_through_sgd():
    torch.manual_seed(0)
    model = TinyNet()
    params = prunable_params(model)
    masks = CRITERIA["random"].global_masks(model, params, 0.3, generator=torch.Generator().manual_seed(1))
    start = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    hooks = keep_in_force(model, masks, optimizer)
    handle = optimizer.register_step_post_hook(lambda *_: hooks.after_step(0))
    grads: list = []
    _train(model, optimizer, 50, torch.Generator().manual_seed(2), grads=grads)
    for n, p in params.items():
        off = ~masks[n]
        assert torch.count_nonzero(p.detach()[off]) == 0, n
        assert torch.count_nonzero(optimizer.state[p]["momentum_buffer"][off]) == 0, n
        assert not torch.equal(p.detach()[masks[n]], start[n][masks[n]]), n  # kept weights did train
        # gradients at masked positions are dense (spec §3.3), which is why re-zeroing is needed
        assert any(torch.count_nonzero(g[n][off]) > 0 for g in grads), n

    # a connection grown now (RigL-style: the largest masked gradient) starts from weight 0 and momentum 0
    name = "conv2.weight"
    flat = (grads[-1][name].abs() * ~masks[name]).argmax().item()
    pos = list(torch.unravel_index(torch.tensor(flat), masks[name].shape))
    pos = [int(i) for i in pos]
    masks[name][tuple(pos)] = True  # in place, then refresh: how a rewiring method changes the topology
    hooks.enforcer.refresh()
    assert params[name][tuple(pos)].item() == 0 and optimizer.state[params[name]]["momentum_buffer"][tuple(pos)] == 0
    _train(model, optimizer, 1, torch.Generator().manual_seed(3))
    assert params[name][tuple(pos)].item() != 0  # it now trains, like any kept weight

    handle.remove()  # without the hook, one step makes masked weights non-zero: the test above can fail
    _train(model, optimizer, 1, torch.Generator().manual_seed(4))
    assert any(torch.count_nonzero(p.detach()[~masks[n]]) > 0 for n, p in params.items())


def test_masked_weights_and_adam_moments_stay_zero():
    torch.manual_seed(0)
    model = TinyNet()
    params = prunable_params(model)
    masks = global_magnitude_masks(params, 0.4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    hooks = keep_in_force(model, masks, optimizer)
    optimizer.register_step_post_hook(lambda *_: hooks.after_step(0))
    _train(model, optimizer, 10, torch.Generator().manual_seed(2))
    for n, p in params.items():
        off = ~masks[n]
        assert torch.count_nonzero(p.detach()[off]) == 0
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.count_nonzero(optimizer.state[p][key][off]) == 0


# --------------------------------------------------------------------------- magnitude and random masks

def test_global_magnitude_uses_one_threshold_over_all_layers():
    params = {"a": torch.tensor([0.1, -5.0, 0.3]), "b": torch.tensor([[4.0, -0.2], [0.05, 2.0]])}
    masks = global_magnitude_masks(params, 3 / 7)  # keep 3 of 7: |-5|, 4, 2
    assert masks["a"].tolist() == [False, True, False]
    assert masks["b"].tolist() == [[True, False], [False, True]]
    tied = global_magnitude_masks({"a": torch.ones(3), "b": torch.ones(2)}, 0.4)
    assert tied["a"].tolist() == [True, True, False] and not tied["b"].any()


def test_imp_rounds_prune_a_fraction_of_the_remaining_exactly():
    gen = torch.Generator().manual_seed(0)
    params = {"c1": torch.randn(16, 3, 3, 3, generator=gen), "c2": torch.randn(32, 16, 3, 3, generator=gen),
              "fc": torch.randn(10, 32, generator=gen)}
    total = sum(p.numel() for p in params.values())
    masks = MaskSet({n: torch.ones(p.shape, dtype=torch.bool) for n, p in params.items()})
    for k in range(1, 8):
        # "training" between rounds moves the surviving weights
        trained = {n: (p + 0.3 * torch.randn(p.shape, generator=gen)) * masks[n] for n, p in params.items()}
        new = global_magnitude_masks(trained, imp_round_density(0.2, k), within=masks)
        assert sum(new.counts().values()) == round(total * 0.8 ** k)
        assert 1 - new.density() == pytest.approx(1 - 0.8 ** k, abs=1 / total)
        assert all(not (new[n] & ~masks[n]).any() for n in params)  # never regrows
        survivors = torch.cat([trained[n][masks[n]].abs() for n in params])
        kept = torch.cat([trained[n][new[n]].abs() for n in params])
        assert kept.min() >= survivors.sort(descending=True).values[len(kept) - 1]
        masks = new
    with pytest.raises(ValueError, match="regrow"):
        global_magnitude_masks(params, 0.9, within=masks)


def _nested_masks(flips: list[int], n: int = 1000) -> list[MaskSet]:
    """Masks whose first `c` entries are flipped from a base mask: distance(i, j) = |c_i - c_j| / n."""
    base = torch.arange(n) % 3 == 0
    out = []
    for c in flips:
        m = base.clone()
        m[:c] = ~m[:c]
        out.append(MaskSet({"w": m.view(10, -1)}))
    return out


def test_early_bird_fires_when_the_window_settles():
    flips = [600, 500, 400, 300, 200, 150, 120, 100, 90, 85, 85]
    # max distance in the window ending at i: (flips[i-4] - flips[i]) / 1000 -> 0.4, .35, .28, .2, .11, .065
    detector = EarlyBirdDetector(window=5, threshold=0.08)
    fired = [detector.update(m, epoch=e + 1) for e, m in enumerate(_nested_masks(flips))]
    assert fired.index(True) == 9 and detector.fired_at == 9 and detector.curve[9]["epoch"] == 10
    assert detector.curve[0]["previous"] is None
    previous = [c["previous"] for c in detector.curve[1:]]
    assert previous == pytest.approx([0.1, 0.1, 0.1, 0.1, .05, .03, .02, .01, .005, 0])
    assert [c["window"] for c in detector.curve[:4]] == [[], [], [], []]
    assert detector.curve[9]["window"] == pytest.approx([0.065, 0.035, 0.015, 0.005])
    assert len(detector.queue) == 5


def test_early_bird_never_fires_before_the_window_is_full_and_threshold_is_inclusive():
    detector = EarlyBirdDetector(window=5, threshold=0.08)
    same = _nested_masks([0] * 6)
    assert [detector.update(m) for m in same] == [False, False, False, False, True, True]
    edge = EarlyBirdDetector(window=2, threshold=0.08)
    assert [edge.update(m) for m in _nested_masks([0, 80])] == [False, True]  # distance exactly 0.08


def test_early_bird_state_dict_resumes_identically():
    masks = _nested_masks([600, 500, 400, 300, 200, 150, 120, 100, 90, 85])
    full = EarlyBirdDetector()
    expected = [full.update(m) for m in masks]
    first = EarlyBirdDetector()
    for m in masks[:6]:
        first.update(m)
    resumed = EarlyBirdDetector()
    resumed.load_state_dict(first.state_dict())
    assert [resumed.update(m) for m in masks[6:]] == expected[6:]
    assert resumed.curve == full.curve and resumed.fired_at == full.fired_at
    with pytest.raises(ValueError, match="window"):
        EarlyBirdDetector(window=4).load_state_dict(first.state_dict())


# --------------------------------------------------------------------------- nni criteria

def test_nni_level_pruner_equals_layerwise_magnitude_and_leaves_the_model_alone():
    from pipeline.sparsity.nni_criteria import criterion_masks

    torch.manual_seed(0)
    model = TinyNet()
    before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    masks = criterion_masks(model, pruner="level",
                            config_list=[{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.6,
                                          "exclude_op_names": ["fc"]}])
    assert list(masks) == ["conv1.weight", "conv2.weight", "head.weight"]
    params = {n: p for n, p in prunable_params(model).items() if n in masks}
    ours = MaskSet({n: topk_mask(p.detach().abs(), p.numel() - int(p.numel() * 0.6)) for n, p in params.items()})
    assert masks.hamming_distance(ours) == 0.0
    # the caller's model is untouched: same Parameter objects and values, no nni wrapper left behind
    assert list(dict(model.named_parameters())) == list(before)
    for n, p in model.named_parameters():
        assert p is before[n][0] and torch.equal(p, before[n][1])
    assert not any(hasattr(m, "_nni_wrapper") or "forward" in vars(m) for m in model.modules())


def test_nni_l1_gives_whole_filters_and_unsupported_pruners_say_why():
    from pipeline.sparsity.nni_criteria import criterion_masks

    torch.manual_seed(0)
    model = TinyNet()
    masks = criterion_masks(model, pruner="l1", config_list=[{"op_names": ["conv2"], "sparse_ratio": 0.5}])
    filters = masks["conv2.weight"].flatten(1)
    assert list(masks) == ["conv2.weight"] and masks.density() == 0.5
    assert bool((filters.all(1) | ~filters.any(1)).all())  # each output filter kept or dropped whole
    norms = model.conv2.weight.detach().abs().flatten(1).sum(1)
    assert set(filters.all(1).nonzero().view(-1).tolist()) == set(norms.argsort(descending=True)[:4].tolist())
    with pytest.raises(ConfigError, match="training data"):
        criterion_masks(model, pruner="slim", config_list=[{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    with pytest.raises(ConfigError, match="fpgm, l1, l2, level"):
        criterion_masks(model, pruner="oracle", config_list=[])


def test_taylor_criterion_ranks_weight_times_gradient_globally():
    from pipeline.sparsity.criteria import taylor_scores
    from pipeline.sparsity.tickets import CriterionConfig, ticket_masks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    batches = [(torch.rand(5, 1, 8, 8), torch.randint(0, 3, (5,))) for _ in range(2)]
    params = {"0.weight": model[0].weight, "3.weight": model[3].weight}
    # by hand: |w * grad| of the summed per-batch losses
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y in batches:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for n, p in params.items():
            expected[n] += (p.detach() * p.grad).abs()
    scores = taylor_scores(model, params, batches=batches)
    assert all(torch.allclose(scores[n], expected[n], atol=1e-7) for n in params)

    masks = ticket_masks(model, CriterionConfig(pruner="taylor"), 0.25, batches=batches)
    flat = torch.cat([scores[n].flatten() for n in params])
    k = round(0.25 * flat.numel())
    assert sum(int(m.sum()) for m in masks.values()) == k
    threshold = flat.sort(descending=True).values[k - 1]
    kept = torch.cat([scores[n][masks[n]].flatten() for n in params])
    assert bool((kept >= threshold).all())
    with pytest.raises(ValueError, match="needs training batches"):
        ticket_masks(model, CriterionConfig(pruner="taylor"), 0.25)
