"""Global magnitude masks (one exact top-k over all layers together) and the IMP round densities."""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from pipeline.sparsity.masks import MaskSet
from pipeline.sparsity.select import topk_mask


def _total(params: Mapping[str, Tensor]) -> int:
    return sum(p.numel() for p in params.values())


def _split(flat: Tensor, params: Mapping[str, Tensor]) -> MaskSet:
    out, start = {}, 0
    for name, p in params.items():
        out[name] = flat[start:start + p.numel()].view(p.shape).to(p.device)
        start += p.numel()
    return MaskSet(out)


def _check_density(density: float) -> None:
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")


def global_magnitude_masks(params: Mapping[str, Tensor], density: float, *,
                           within: MaskSet | None = None, rule: str = "topk") -> MaskSet:
    """Keep the round(density * total) largest |w| over all layers together (exact global top-k).

    rule "threshold" is the Robust Bird detection rule instead (SW utils/early_bird.py): sort all |w|,
    keep those strictly above the value at index floor(total * (1 - density)): ceil(density * total) - 1
    weights when there are no ties, and every weight tied with that value dropped.

    `density` is always relative to all weights in `params`. With `within`, only entries that mask
    still keeps are ranked, so the result is a subset of it: IMP round k passes density (1 - p)^k and
    `within` = round k-1's mask, which prunes p of the remaining weights (global L1 among survivors).
    Ties go to the lower index in layer order. This differs from the reference "keep |w| > value at
    index floor(total * (1 - density))" by at most one weight, and is exact for any ties.
    """
    _check_density(density)
    if not params:
        raise ValueError("no parameters to rank")
    if within is not None:
        within._check_same_layout(params, "params")
    device = next(iter(params.values())).device
    scores = []
    for name, p in params.items():
        s = p.detach().abs().reshape(-1).to(device)
        if within is not None:
            s = s.masked_fill(~within[name].reshape(-1).to(device), float("-inf"))
        scores.append(s)
    if rule == "threshold":
        if within is not None:
            raise ValueError("rule 'threshold' ranks all weights; it takes no `within`")
        flat = torch.cat(scores)
        index = math.floor(flat.numel() * (1.0 - density))
        if index >= flat.numel():
            return _split(torch.zeros_like(flat, dtype=torch.bool), params)
        return _split(flat > torch.kthvalue(flat, index + 1).values, params)
    if rule != "topk":
        raise ValueError(f"rule must be 'topk' or 'threshold', got {rule!r}")
    k = round(density * _total(params))
    if within is not None and k > sum(within.counts().values()):
        raise ValueError(f"density {density} keeps {k} weights, more than the {sum(within.counts().values())} "
                         "that `within` leaves; magnitude pruning cannot regrow")
    return _split(topk_mask(torch.cat(scores), k), params)


def imp_round_density(prune_rate: float, round_index: int) -> float:
    """Density after `round_index` IMP rounds that each prune `prune_rate` of the remaining weights."""
    if not 0.0 <= prune_rate < 1.0 or round_index < 0:
        raise ValueError(f"need 0 <= prune_rate < 1 and round_index >= 0, got {prune_rate}, {round_index}")
    return (1.0 - prune_rate) ** round_index
