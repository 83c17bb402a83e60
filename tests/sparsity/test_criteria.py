"""Static pruning criteria (pipeline.sparsity.criteria): one registry, one exact global top-k, masks pinned."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from pipeline.sparsity import MaskSet
from pipeline.sparsity.criteria import CRITERIA, Criterion, criterion, get_criterion
from pipeline.sparsity.tickets import CriterionConfig, criterion_batches, ticket_masks


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.Flatten(), nn.Linear(8, 3, bias=False))


BATCHES = [(torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(i)), torch.tensor([0, 1, 2, 1]))
           for i in range(2)]


def bits(masks: MaskSet) -> str:
    return "".join("".join("1" if b else "0" for b in m.reshape(-1).tolist()) + "|" for m in masks.values())


def test_global_top_k_by_hand():
    params = {"a": torch.tensor([0.1, -5.0, 0.3]), "b": torch.tensor([[4.0, -0.2], [0.05, 2.0]])}
    masks = CRITERIA["global_magnitude"].global_masks(None, params, 3 / 7)  # keep |-5|, 4, 2
    assert bits(masks) == "010|1001|"
    # random: the 3 largest of the generator's uniform draws, in layer order, over both layers together
    draws = torch.rand(7, generator=torch.Generator().manual_seed(3))
    expected = torch.zeros(7, dtype=torch.bool)
    expected[draws.argsort(descending=True)[:3]] = True
    rnd = CRITERIA["random"].global_masks(None, params, 3 / 7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([rnd["a"], rnd["b"].reshape(-1)]), expected)
    # within: only the survivors compete, so the result is a subset
    inner = CRITERIA["global_magnitude"].global_masks(None, params, 1 / 7, within=masks)
    assert bits(inner) == "010|0000|"


def test_taylor_scores_by_hand_on_a_linear_model():
    # one linear layer without bias, one sample: dL/dW = (softmax(Wx) - onehot(y)) x^T
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    p = torch.softmax(torch.tensor([1.0 - 4.0, 0.5 + 6.0]), 0)
    grad = torch.outer(p - torch.tensor([0.0, 1.0]), x[0])
    scores = CRITERIA["taylor"].scores(model, {"weight": model.weight}, batches=[(x, y)], generator=None)
    assert torch.allclose(scores["weight"], (model.weight.detach() * grad).abs(), atol=1e-7)
    masks = CRITERIA["taylor"].global_masks(model, {"weight": model.weight}, 0.5, batches=[(x, y)])
    order = (model.weight.detach() * grad).abs().reshape(-1).argsort(descending=True)[:2]
    assert sorted(torch.nonzero(masks["weight"].reshape(-1)).view(-1).tolist()) == sorted(order.tolist())


# The masks the criteria gave before they moved into the registry (same model, inputs and seeds).
PINNED = {
    "global_magnitude": "00110001|000010000000010000110001|",
    "random": "00000000|011000000010101000101010|",
    "taylor": "00110001|000010001110010000000000|",
    "level": "01110001|000011100111010100111001|",
    "random_within": "00110001|000000000010000100101001|",
    "taylor_within": "00111001|",
}


def test_masks_are_bit_identical_to_the_pre_registry_criteria():
    m = tiny()
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert bits(ticket_masks(m, CriterionConfig(), 0.25)) == PINNED["global_magnitude"]
    assert bits(ticket_masks(m, CriterionConfig(pruner="random"), 0.25, generator=gen())) == PINNED["random"]
    assert bits(ticket_masks(m, CriterionConfig(pruner="taylor"), 0.25, batches=BATCHES)) == PINNED["taylor"]
    assert bits(ticket_masks(m, CriterionConfig(pruner="level"), 0.5)) == PINNED["level"]
    within = ticket_masks(m, CriterionConfig(), 0.5)
    assert bits(ticket_masks(m, CriterionConfig(pruner="random"), 0.25, within=within, generator=gen())) \
        == PINNED["random_within"]
    # imp's random baseline: another criterion over the same scope
    assert bits(ticket_masks(m, CriterionConfig(), 0.25, within=within, generator=gen(), pruner="random")) \
        == PINNED["random_within"]
    conv = ticket_masks(m, CriterionConfig(scope="conv"), 0.75)
    assert bits(ticket_masks(m, CriterionConfig(pruner="taylor", scope="conv"), 0.5, batches=BATCHES, within=conv)) \
        == PINNED["taylor_within"]


def test_unknown_or_unsupported_criterion_is_a_validation_error_listing_valid_names():
    with pytest.raises(ValidationError) as err:
        CriterionConfig(pruner="oracle")
    assert "unknown pruner 'oracle'; valid: global_magnitude, random, taylor, fpgm, l1, l2, level" in str(err.value)
    with pytest.raises(ValidationError, match="SlimPruner"):
        CriterionConfig(pruner="slim")
    with pytest.raises(ValidationError, match=r"config_list: only used with the nni pruners \(fpgm, l1, l2, level\)"):
        CriterionConfig(pruner="taylor", config_list=[{"op_types": ["Conv2d"]}])
    with pytest.raises(ValueError, match="needs a generator"):
        ticket_masks(tiny(), CriterionConfig(pruner="random"), 0.5)


def test_a_registered_score_function_is_a_criterion_everywhere():
    @criterion("smallest_first")
    def _inverse(model, params, *, batches=None, generator=None):
        return {n: 1.0 / (p.detach().abs() + 1e-12) for n, p in params.items()}

    try:
        cfg = CriterionConfig(pruner="smallest_first")
        m = tiny()
        masks = ticket_masks(m, cfg, 0.25)
        magnitude = ticket_masks(m, CriterionConfig(), 0.75)
        assert sum(masks.counts().values()) == 8 and not any((masks[n] & magnitude[n]).any() for n in masks)
        assert criterion_batches(cfg, None, batch_size=4, seed=0, device="cpu") is None  # needs no data
        assert isinstance(get_criterion("smallest_first"), Criterion)
    finally:
        del CRITERIA["smallest_first"]
