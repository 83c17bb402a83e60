"""evaluate() on hand-built models with known answers, RNG isolation, and the summary metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.metrics.attacks import AttackConfig
from pipeline.engine.errors import DataError, PipelineError
from pipeline.metrics.evaluation import robust_gap, select_best, selection_key, summarize_history, summarize_selected, evaluate

K = 4.0  # logit scale of the brightness classifier (small, so the CE is far from fp32 round-off)


class Brightness(nn.Module):
    """Class 1 iff the mean pixel is above 0.5: logits (-K (m - 0.5), K (m - 0.5)) via a fixed Linear(1, 2)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(1, 2)
        self.sub = nn.Dropout(0.0)  # a submodule whose mode must be restored too
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-K], [K]]))
            self.head.bias.copy_(torch.tensor([K / 2, -K / 2]))

    def forward(self, x):
        return self.head(self.sub(x.mean(dim=(1, 2, 3)).unsqueeze(1)))


def _dark_and_bright(n=20):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.rand(n, 3, 4, 4, generator=g) * 0.3 + 0.7 * y.view(-1, 1, 1, 1)  # means ~0.15 or ~0.85
    return x, y


def _expected_ce(x, y):
    m = x.double().mean(dim=(1, 2, 3))
    z = K * (m - 0.5)
    logits = torch.stack([-z, z], dim=1)
    return torch.nn.functional.cross_entropy(logits, y).item()


def test_clean_accuracy_and_loss_known_answer():
    x, y = _dark_and_bright()
    out = evaluate(Brightness(), x, y, batch_size=7, device="cpu")
    assert out["acc"] == 100.0 and out["n"] == 20
    assert out["loss"] == pytest.approx(_expected_ce(x, y), rel=1e-5)
    wrong = evaluate(Brightness(), x, 1 - y, batch_size=7, device="cpu")
    assert wrong["acc"] == 0.0


def test_uint8_numpy_input_and_limit():
    x, y = _dark_and_bright()
    x_u8 = (x * 255).round().to(torch.uint8)
    out = evaluate(Brightness(), x_u8.numpy(), y.numpy(), device="cpu", limit=11)
    assert out["n"] == 11 and out["acc"] == 100.0
    assert out["loss"] == pytest.approx(_expected_ce(x_u8[:11].double() / 255, y[:11]), rel=1e-5)


def test_robust_accuracy_small_eps_survives_large_eps_breaks_everything():
    x, y = _dark_and_bright()
    # The margin is ~0.35 in mean brightness: eps 0.02 cannot cross it, eps 0.5 always does.
    small = evaluate(Brightness(), x, y, attack=AttackConfig(eps=0.02, step=0.01, steps=5), device="cpu")
    assert small["acc"] == 100.0
    big = evaluate(Brightness(), x, y, attack=AttackConfig(eps=0.5, step=0.2, steps=5), device="cpu")
    assert big["acc"] == 0.0
    # The attack pushes every pixel by the full eps (clipped to [0, 1]): the loss is known exactly.
    x_adv = torch.where(y.view(-1, 1, 1, 1) == 1, (x - 0.5).clamp(min=0), (x + 0.5).clamp(max=1))
    assert big["loss"] == pytest.approx(_expected_ce(x_adv, y), rel=1e-5)
    fast = evaluate(Brightness(), x, y, attack=AttackConfig(kind="fgsm_rs", eps=0.5), device="cpu")
    assert fast["acc"] == 0.0


class FirstPixel(nn.Module):
    """Class 1 iff pixel (0, 0, 0) > 0.5: on all-0.5 images the random start decides."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(50.0))

    def forward(self, x):
        z = self.scale * (x[:, 0, 0, 0] - 0.5)
        return torch.stack([-z, z], dim=1)


def test_restarts_count_an_example_robust_only_if_it_survives_all():
    x = torch.full((200, 1, 2, 2), 0.5)
    y = torch.ones(200, dtype=torch.long)
    # A tiny step barely moves the start, so each restart is a coin flip per example.
    one = evaluate(FirstPixel(), x, y, attack=AttackConfig(eps=0.1, step=1e-4, steps=1, restarts=1),
                   device="cpu", seed=3)
    three = evaluate(FirstPixel(), x, y, attack=AttackConfig(eps=0.1, step=1e-4, steps=1, restarts=3),
                     device="cpu", seed=3)
    assert 30.0 < one["acc"] < 70.0
    assert three["acc"] < one["acc"] and 2.0 < three["acc"] < 30.0
    assert three["loss"] == one["loss"]  # the loss comes from the first restart, seeded identically


def test_seeded_deterministic_and_global_rng_untouched():
    x = torch.full((64, 1, 2, 2), 0.5)
    y = torch.ones(64, dtype=torch.long)
    cfg = AttackConfig(eps=0.1, step=1e-4, steps=1)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = evaluate(FirstPixel(), x, y, attack=cfg, device="cpu", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    b = evaluate(FirstPixel(), x, y, attack=cfg, device="cpu", seed=1)
    c = evaluate(FirstPixel(), x, y, attack=cfg, device="cpu", seed=2)
    assert a == b and a["loss"] != c["loss"]


def test_modes_grads_and_requires_grad_restored():
    model = Brightness()
    model.train()
    model.sub.eval()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    x, y = _dark_and_bright()
    evaluate(model, x, y, attack=AttackConfig(eps=0.02, step=0.01, steps=2), device="cpu")
    assert model.training and not model.sub.training
    assert all(p.requires_grad and torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())


def test_bad_inputs_are_data_errors():
    x, y = _dark_and_bright()
    with pytest.raises(DataError, match="channels-last"):
        evaluate(Brightness(), x.permute(0, 2, 3, 1).repeat(1, 2, 2, 1), y, device="cpu")
    with pytest.raises(DataError, match="labels"):
        evaluate(Brightness(), x, y[:5], device="cpu")
    with pytest.raises(DataError, match="empty"):
        evaluate(Brightness(), x[:0], y[:0], device="cpu")


HISTORY = [
    {"epoch": 0, "val_ra": 30.0, "test_ra": 28.0, "test_sa": 70.0},
    {"epoch": 1, "loss": 1.0},  # no evaluation this epoch
    {"epoch": 2, "val_ra": 45.0, "test_ra": 44.0, "test_sa": 75.0},
    {"epoch": 3, "val_ra": 45.0, "test_ra": 46.0, "test_sa": 78.0},  # tie on val RA: the earlier epoch wins
    {"epoch": 4, "val_ra": 40.0, "test_ra": 41.0, "test_sa": 80.0},
    {"epoch": 5, "loss": 0.5},
]


def test_summarize_history_hand_computed():
    assert select_best(HISTORY) == 2
    summary = summarize_history(HISTORY)
    assert summary == {"RA_best": 44.0, "RA_final": 41.0, "RA_diff": 3.0,
                       "SA_best": 75.0, "SA_final": 80.0, "SA_diff": -5.0, "best_epoch": 2}
    # Robust Bird's test-selected variant: the best test RA over epochs.
    assert summarize_history(HISTORY, select_key="test_ra")["RA_best"] == 46.0
    assert summarize_history(HISTORY, select_key="test_ra")["best_epoch"] == 3


def test_selection_rule_val_ra_else_val_sa():
    assert selection_key(HISTORY) == "val_ra"
    clean = [{"epoch": 1, "val_sa": 80.0, "test_sa": 79.0}, {"epoch": 2, "val_sa": 78.0, "test_sa": 81.0}]
    assert selection_key(clean) == "val_sa"  # trained and evaluated without attacks: no RA to select on
    s = summarize_selected(clean)
    assert s["best_epoch"] == 1 and s["RA_diff"] is None and s["SA_diff"] == -2.0
    assert selection_key([{"epoch": 1, "val_ra": math.nan, "val_sa": 5.0}]) == "val_sa"
    assert selection_key([]) is None and summarize_selected([]) == {}


def test_select_best_skips_nan_and_needs_some_value():
    assert select_best([{"val_ra": math.nan}, {"val_ra": 1.0}]) == 1
    with pytest.raises(PipelineError, match="val_ra"):
        select_best([{"epoch": 0}, {"epoch": 1}])


def test_gap_and_overfitting_match_the_paper_table():
    # SW C10 dense row: final test RA 43.61 with gap 38.82 -> train RA 82.43; best 51.10 -> Diff 7.49.
    assert robust_gap(82.43, 43.61) == pytest.approx(38.82)
    assert summarize_history([{"epoch": 1, "val_ra": 2.0, "test_ra": 51.10}, {"epoch": 2, "val_ra": 1.0, "test_ra": 43.61}]
                             )["RA_diff"] == pytest.approx(7.49)
