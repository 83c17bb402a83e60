"""Exact selection of which entries to keep: top-k by score, or k uniformly at random.

Every selector here returns exactly k True entries (never "k in expectation"), and ties are broken
deterministically by flat index, so a mask depends only on the scores (or on the generator's state).
"""
from __future__ import annotations


import torch

from torch import Tensor


def _check_k(k: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 0 <= k <= n:
        raise ValueError(f"k={k} is outside [0, {n}] for a tensor of {n} entries")


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """Bool mask of `scores`' shape with exactly k True at the k largest scores.

    Ties at the threshold go to the lower flat index. -inf scores are valid (ranked last); NaN is an error.
    """
    flat = scores.detach().reshape(-1)
    n = flat.numel()
    _check_k(k, n)
    keep = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k == 0:
        return keep.view(scores.shape)
    if k == n:
        return keep.fill_(True).view(scores.shape)
    if flat.is_floating_point() and bool(torch.isnan(flat).any()):
        raise ValueError("scores contain NaN; cannot rank them")
    # kthvalue is a linear-time selection; the k-th largest is the (n-k+1)-th smallest.
    threshold = torch.kthvalue(flat, n - k + 1).values
    keep = flat > threshold
    missing = k - int(keep.sum())
    tied = torch.nonzero(flat == threshold).view(-1)[:missing]  # nonzero lists indices in ascending order
    keep[tied] = True
    return keep.view(scores.shape)


def random_mask(shape: tuple[int, ...] | torch.Size, k: int, generator: torch.Generator,
                *, device: torch.device | str | None = None) -> Tensor:
    """Bool mask with exactly k True positions drawn uniformly without replacement from `generator`."""
    shape = torch.Size(shape)
    n = shape.numel()
    _check_k(k, n)
    order = torch.randperm(n, generator=generator, device=generator.device)
    keep = torch.zeros(n, dtype=torch.bool, device=generator.device)
    keep[order[:k]] = True
    return keep.view(shape).to(device) if device is not None else keep.view(shape)


