"""pgd_linf / fgsm_rs against advertorch, AttackConfig parsing, and the adversarial training step."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from pipeline.metrics.attacks import AttackConfig, advertorch_pgd, fgsm_rs, make_train_attack, pgd_linf
from pipeline.metrics.advertorch_compat import import_advertorch
from pipeline.engine.errors import ConfigError
from pipeline.train.step import StepOutput, adversarial_train_step

EPS, STEP = 8 / 255, 2 / 255


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, num_classes)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(h, 4).flatten(1))


def _setup(dtype=torch.float64, n=6, seed=0):
    torch.manual_seed(seed)
    model = TinyNet().to(dtype)
    x = torch.rand(n, 3, 8, 8, dtype=dtype)
    x[0, 0, :2] = 0.0  # pixels on the [0, 1] boundary exercise the clipping
    x[1, 1, :2] = 1.0
    y = torch.arange(n) % 3
    return model, x, y


def _advertorch_linf(model, x, y, seed, steps=10):
    import_advertorch()
    from advertorch.attacks import LinfPGDAttack

    torch.manual_seed(seed)
    adversary = LinfPGDAttack(model, loss_fn=nn.CrossEntropyLoss(reduction="sum"), eps=EPS, nb_iter=steps,
                              eps_iter=STEP, rand_init=True, clip_min=0.0, clip_max=1.0)
    return adversary.perturb(x, y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pgd_matches_advertorch_from_same_random_start(dtype):
    model, x, y = _setup(dtype)
    model.eval()
    ref = _advertorch_linf(model, x, y, seed=7)
    ours = pgd_linf(model, x, y, eps=EPS, step=STEP, steps=10, generator=torch.Generator().manual_seed(7))
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_pgd_matches_advertorch_perturb_iterative_from_delta_init():
    import_advertorch()
    from advertorch.attacks.iterative_projected_gradient import perturb_iterative

    model, x, y = _setup()
    model.eval()
    delta0 = (torch.rand_like(x) * 2 - 1) * 0.05  # outside the eps box: the first step must project it
    ref = perturb_iterative(x, y, model, nb_iter=5, eps=EPS, eps_iter=STEP,
                            loss_fn=nn.CrossEntropyLoss(reduction="sum"), delta_init=delta0.clone())
    ours = pgd_linf(model, x, y, eps=EPS, step=STEP, steps=5, delta_init=delta0)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_pgd_in_train_mode_matches_advertorch_including_bn_running_stats():
    model, x, y = _setup()
    twin = copy.deepcopy(model)
    model.train()
    twin.train()
    ref = _advertorch_linf(twin, x, y, seed=3, steps=4)
    ours = pgd_linf(model, x, y, eps=EPS, step=STEP, steps=4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.bn.running_mean, twin.bn.running_mean)
    assert int(model.bn.num_batches_tracked) == 4  # every attack forward updates the stats, as in the papers
    assert model.training


def test_pgd_stays_in_ball_and_box_and_raises_loss_without_touching_parameters():
    model, x, y = _setup(torch.float32, n=12)
    model.eval()
    for p in model.parameters():
        p.grad = None
    x_adv = pgd_linf(model, x, y, eps=EPS, step=STEP, steps=5)
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_pgd_random_start_reproducible_and_layout_independent():
    model, x, y = _setup(torch.float64)
    model.eval()
    a = pgd_linf(model, x, y, eps=EPS, step=STEP, steps=3, generator=torch.Generator().manual_seed(1))
    b = pgd_linf(model, x, y, eps=EPS, step=STEP, steps=3, generator=torch.Generator().manual_seed(1))
    c = pgd_linf(model, x, y, eps=EPS, step=STEP, steps=3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    d = pgd_linf(model, x_cl, y, eps=EPS, step=STEP, steps=3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(d, a, atol=1e-9, rtol=0)


def test_pgd_under_bf16_autocast_returns_fp32_in_ball():
    model, x, y = _setup(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd_linf(model, x, y, eps=EPS, step=STEP, steps=3)
    assert x_adv.dtype == torch.float32
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > EPS / 2  # it moved


def test_fgsm_rs_is_one_step_of_1_25_eps_from_random_start():
    model, x, y = _setup(torch.float64)
    model.eval()
    x_adv = fgsm_rs(model, x, y, eps=EPS, generator=torch.Generator().manual_seed(4))
    assert (x_adv - x).abs().max() <= EPS + 1e-12 and x_adv.min() >= 0 and x_adv.max() <= 1
    same = pgd_linf(model, x, y, eps=EPS, step=1.25 * EPS, steps=1, generator=torch.Generator().manual_seed(4))
    assert torch.equal(x_adv, same)
    # A step of 1.25 eps from anywhere in the box lands on its face (or the [0, 1] clip) in most pixels.
    on_face = ((x_adv - x).abs() - EPS).abs() < 1e-9
    assert on_face.double().mean() > 0.5


def test_advertorch_pgd_leaves_param_grads_and_flags_alone():
    model, x, y = _setup(torch.float32)
    model.eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    with torch.no_grad():  # must still attack
        x_adv = advertorch_pgd(model, x, y, eps=EPS, step=STEP, steps=3)
    assert (x_adv - x).abs().max() > EPS / 2
    assert all(p.requires_grad and torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters())


def test_attack_config_parses_fractions_and_defaults():
    cfg = AttackConfig.model_validate({"eps": "8/255", "step": "2/255"})
    assert cfg.eps == pytest.approx(8 / 255) and cfg.step == pytest.approx(2 / 255)
    assert (cfg.kind, cfg.steps, cfg.random_start, cfg.restarts) == ("pgd", 10, True, 1)
    fast = AttackConfig(kind="fgsm_rs", eps="8/255")
    assert fast.step == pytest.approx(10 / 255)
    assert AttackConfig(kind="fgsm_rs", eps="8/255", step="7/255").step == pytest.approx(7 / 255)


@pytest.mark.parametrize("bad, field", [({"eps": -0.1}, "eps"), ({"eps": "8/0"}, "eps"), ({"step": 0}, "step"),
                                        ({"steps": 0}, "steps"), ({"restarts": 0}, "restarts"),
                                        ({"kind": "cw"}, "kind"), ({"epsilon": 0.1}, "epsilon")])
def test_attack_config_rejects(bad, field):
    with pytest.raises(ValidationError) as info:
        AttackConfig.model_validate(bad)
    assert field in {str(err["loc"][0]) for err in info.value.errors()}


def test_make_train_attack():
    assert make_train_attack(AttackConfig(kind="none")) is None
    model, x, y = _setup(torch.float64)
    model.eval()
    attack = make_train_attack(AttackConfig(eps=EPS, step=STEP, steps=3))
    expected = pgd_linf(model, x, y, eps=EPS, step=STEP, steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(attack(model, x, y, torch.Generator().manual_seed(5)), expected)
    fast = make_train_attack(AttackConfig(kind="fgsm_rs", eps=EPS))
    expected = fgsm_rs(model, x, y, eps=EPS, generator=torch.Generator().manual_seed(5))
    assert torch.equal(fast(model, x, y, torch.Generator().manual_seed(5)), expected)


def _separable(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, 3, 8, 8, generator=g) * 0.3 + 0.7 * y.view(-1, 1, 1, 1)  # dark vs bright images
    return x, y


def test_train_step_learns_under_pgd_and_calls_hooks_in_order():
    torch.manual_seed(0)
    model = TinyNet(num_classes=2)
    model.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = _separable()
    attack = make_train_attack(AttackConfig(eps=EPS, step=STEP, steps=2))
    calls: list[str] = []

    def after_backward():
        assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0
        calls.append("backward")

    def after_step():
        calls.append("step")

    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(15):
        out = adversarial_train_step(model, optimizer, x, y, attack=attack, generator=gen,
                                     after_backward=after_backward, after_step=after_step)
        losses.append(out.loss)
    assert isinstance(out, StepOutput) and out.n == 32 and model.training
    assert isinstance(out.loss, torch.Tensor) and not out.loss.requires_grad
    assert out.correct.dtype == torch.int64 and 0 <= int(out.correct) <= 32
    assert calls == ["backward", "step"] * 15
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])
    assert int(out.correct) == 32


def test_train_step_bf16_autocast_without_attack_reports_the_pre_update_batch():
    torch.manual_seed(0)
    model = TinyNet(num_classes=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _separable(8)
    twin = copy.deepcopy(model).train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = twin(x)
        expected_loss = F.cross_entropy(logits, y)
    before = model.fc.weight.detach().clone()
    out = adversarial_train_step(model, optimizer, x, y, attack=None, autocast_dtype=torch.bfloat16)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, expected_loss)
    assert int(out.correct) == int((logits.argmax(1) == y).sum())
    assert not torch.equal(model.fc.weight, before)
    with pytest.raises(ConfigError, match="autocast_dtype"):
        adversarial_train_step(model, optimizer, x, y, attack=None, autocast_dtype=torch.float16)
