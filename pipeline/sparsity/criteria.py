"""Static pruning criteria by name: one registry of score functions, then the one exact global top-k.

A global criterion is a score function `scores(model, params, *, batches, generator) -> {name: Tensor}`
(non-negative, one tensor per weight of `params`); the ticket keeps the round(density * total) highest
scores over all layers together (`global_magnitude_masks`: exact counts, ties to the lower index, and
with `within` only the survivors of the previous mask compete). Add one with `@criterion("name")`.

- `global_magnitude`: |w|, as Robust Bird and IMP prune.
- `random`: uniform scores from the stage's generator, ranked the same way (exact counts, and it can
  prune among survivors).
- `taylor`: the first-order Taylor saliency |w * dL/dw| (the loss change when a weight is removed),
  summed over `taylor_batches` clean training batches.

The nni names (`level`, `l1`, `l2`, `fpgm`) rank per layer (or per filter) inside nni's own pruners,
so they are registered with their nni pruner instead of a score function (`pipeline.sparsity.nni_criteria`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.sparsity.magnitude import global_magnitude_masks
from pipeline.sparsity.masks import MaskSet
from pipeline.sparsity.criteria_names import PRUNERS, unknown_criterion

ScoreFn = Callable[..., dict[str, Tensor]]


@dataclass(frozen=True)
class Criterion:
    name: str
    scores: ScoreFn | None = None  # global criteria
    nni_pruner: str | None = None  # per-layer criteria that nni ranks
    needs_batches: bool = False  # scores read clean training batches (`criterion_batches`)
    needs_generator: bool = False  # scores draw from the stage's generator

    def check_inputs(self, *, batches=None, generator: torch.Generator | None = None) -> None:
        if self.needs_generator and generator is None:
            raise ValueError(f"the {self.name} criterion needs a generator")
        if self.needs_batches and batches is None:
            raise ValueError(f"the {self.name} criterion needs training batches")

    def global_masks(self, model: nn.Module, params: Mapping[str, Tensor], density: float, *,
                     within: MaskSet | None = None, batches=None, generator: torch.Generator | None = None) -> MaskSet:
        """The exact global top-k of this criterion's scores over `params` (raises ValueError on bad input)."""
        if self.scores is None:
            raise ValueError(f"criterion {self.name!r} ranks per layer inside nni; it has no global scores")
        self.check_inputs(batches=batches, generator=generator)
        return global_magnitude_masks(self.scores(model, params, batches=batches, generator=generator), density,
                                      within=within)


CRITERIA: dict[str, Criterion] = {}


def criterion(name: str, *, needs_batches: bool = False, needs_generator: bool = False):
    """Register a score function as the global criterion `name`."""
    def decorate(fn: ScoreFn) -> ScoreFn:
        _add(Criterion(name, scores=fn, needs_batches=needs_batches, needs_generator=needs_generator))
        return fn
    return decorate


def _add(entry: Criterion) -> None:
    if entry.name in CRITERIA:
        raise ValueError(f"pruning criterion {entry.name!r} is already registered")
    CRITERIA[entry.name] = entry


def get_criterion(name: str) -> Criterion:
    """The registered criterion, or a ValueError that lists the valid names."""
    if name in CRITERIA:
        return CRITERIA[name]
    raise unknown_criterion(name, list(CRITERIA))


@criterion("global_magnitude")
def magnitude_scores(model: nn.Module, params: Mapping[str, Tensor], *, batches=None, generator=None) -> dict[str, Tensor]:
    return {n: p.detach().abs() for n, p in params.items()}


@criterion("random", needs_generator=True)
def random_scores(model: nn.Module, params: Mapping[str, Tensor], *, batches=None,
                  generator: torch.Generator | None = None) -> dict[str, Tensor]:
    return {n: torch.rand(p.shape, generator=generator, device=generator.device).to(p.device) for n, p in params.items()}


@criterion("taylor", needs_batches=True)
def taylor_scores(model: nn.Module, params: Mapping[str, Tensor], *, batches=None, generator=None) -> dict[str, Tensor]:
    """Sum over `batches` of |w * dL/dw| (mean CE, eval mode so BN statistics stay as they are)."""
    was_training = model.training
    model.eval()
    scores = {n: torch.zeros_like(p) for n, p in params.items()}
    names, tensors = list(params), list(params.values())
    try:
        for x, y in batches:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            for n, p, g in zip(names, tensors, torch.autograd.grad(loss, tensors)):
                scores[n].add_((p.detach() * g).abs_())
    finally:
        model.train(was_training)
    return scores


for _name, _cls in sorted(PRUNERS.items()):
    _add(Criterion(_name, nni_pruner=_name))
