"""Per-layer density allocation: how many weights each layer keeps for a given global density.

Every allocator has the same signature

    allocate(shapes, density, *, dense=frozenset()) -> {layer: kept_count}

and returns exact integer counts whose sum is exactly round(density * total weights) (except
`erk_uncapped` and `igq_int`, reference rules kept as options: one loses the excess of layers it fills,
the other rounds each layer on its own). Layers named in
`dense` keep every weight and the other layers absorb the rest of the budget. Real-valued quotas are
turned into integers by largest remainder (ties by layer order), never above a layer's size.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Set

from pipeline.engine.errors import ConfigError

Shapes = Mapping[str, tuple[int, ...]]
Allocator = Callable[..., dict[str, int]]


def _budget(shapes: Shapes, density: float, dense: Set[str]) -> tuple[dict[str, int], int, list[str]]:
    """Sizes, the weight budget left for the non-dense layers, and the names of those layers."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    unknown = sorted(set(dense) - set(shapes))
    if unknown:
        raise ValueError(f"dense layers not among the shapes: {unknown}")
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    budget = round(density * sum(sizes.values()))
    left = budget - sum(sizes[name] for name in dense)
    if left < 0:
        raise ValueError(f"density {density} keeps {budget} weights, fewer than the {budget - left} "
                         f"of the layers kept dense ({sorted(dense)})")
    return sizes, left, [name for name in shapes if name not in dense]


def _round_quotas(quotas: Mapping[str, float], sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """Integer counts summing exactly to `total`, each within [0, size], closest to the real quotas."""
    names = list(quotas)
    counts = {n: min(sizes[n], max(0, math.floor(quotas[n]))) for n in names}
    left = total - sum(counts.values())
    if left > sum(sizes[n] - counts[n] for n in names):
        raise ValueError(f"cannot place {total} weights in layers of {sum(sizes[n] for n in names)}")
    # Largest fractional remainder first; sorted() is stable so equal remainders keep layer order.
    by_remainder = sorted(names, key=lambda n: quotas[n] - math.floor(quotas[n]), reverse=True)
    step = 1 if left > 0 else -1
    while left != 0:
        # Float error in the quotas can leave more (or fewer) than one unit per layer to move.
        order = by_remainder if step > 0 else by_remainder[::-1]
        moved = False
        for n in order:
            if left == 0:
                break
            if (step > 0 and counts[n] < sizes[n]) or (step < 0 and counts[n] > 0):
                counts[n] += step
                left -= step
                moved = True
        if not moved:
            raise ValueError(f"cannot place {total} weights in the given layers")
    return counts


def _with_dense(shapes: Shapes, sizes: Mapping[str, int], counts: Mapping[str, int]) -> dict[str, int]:
    return {name: counts.get(name, sizes[name]) for name in shapes}


def uniform(shapes: Shapes, density: float, *, dense: Set[str] = frozenset()) -> dict[str, int]:
    """Every non-dense layer keeps the same fraction of its weights."""
    sizes, left, sparse = _budget(shapes, density, dense)
    pool = sum(sizes[n] for n in sparse)
    fraction = left / pool if pool else 0.0
    return _with_dense(shapes, sizes, _round_quotas({n: fraction * sizes[n] for n in sparse}, sizes, left))


def _scaled_by_score(shapes: Shapes, density: float, dense: Set[str],
                     score: Callable[[tuple[int, ...]], float]) -> dict[str, int]:
    """Density_l = eps * score_l; a layer whose density would pass 1 is capped dense and eps is re-solved."""
    sizes, left, sparse = _budget(shapes, density, dense)
    capped: set[str] = set()
    while True:
        free = [n for n in sparse if n not in capped]
        room = left - sum(sizes[n] for n in capped)
        weight = sum(score(shapes[n]) * sizes[n] for n in free)
        eps = room / weight if weight > 0 else 0.0
        over = [n for n in free if eps * score(shapes[n]) > 1.0]
        if not over:
            break
        # Cap only the layer with the highest score each round, as eps shrinks once it is capped.
        capped.add(max(over, key=lambda n: score(shapes[n])))
    quotas = {n: (float(sizes[n]) if n in capped else eps * score(shapes[n]) * sizes[n]) for n in sparse}
    return _with_dense(shapes, sizes, _round_quotas(quotas, sizes, left))


def erk(shapes: Shapes, density: float, *, dense: Set[str] = frozenset()) -> dict[str, int]:
    """Erdős–Rényi-Kernel: density proportional to sum(shape)/prod(shape), e.g.
    (n_out + n_in + k_h + k_w) / (n_out * n_in * k_h * k_w) for a conv, with dense-layer capping."""
    return _scaled_by_score(shapes, density, dense, _erk_score)


def _erk_score(shape: tuple[int, ...]) -> float:
    return sum(shape) / math.prod(shape)


def erk_uncapped(shapes: Shapes, density: float, *, dense: Set[str] = frozenset()) -> dict[str, int]:
    """The sparselearning lineage's 'ER' / ERK rule as written: layer l keeps eps * sum(shape_l) weights,
    eps solved for the budget as if no layer filled up. A layer whose quota passes its size is kept
    dense and its excess is lost, so the global count ends below round(density * total) then (the
    reference's behaviour; `erk` re-solves eps instead). Without a filled layer it equals `erk`."""
    sizes, left, sparse = _budget(shapes, density, dense)
    weight = sum(_erk_score(shapes[n]) * sizes[n] for n in sparse)
    eps = left / weight if weight > 0 else 0.0
    quotas = {n: min(float(sizes[n]), eps * _erk_score(shapes[n]) * sizes[n]) for n in sparse}
    kept = min(left, round(sum(quotas.values())))  # what the quotas hold once the excess is lost
    return _with_dense(shapes, sizes, _round_quotas(quotas, sizes, kept))


def er(shapes: Shapes, density: float, *, dense: Set[str] = frozenset()) -> dict[str, int]:
    """Mocanu's Erdős–Rényi for fully-connected layers, (n_out + n_in) / (n_out * n_in), applied to convs
    with the kernel size ignored. Not the sparselearning 'ER' (which counts the kernel: `erk`)."""
    return _scaled_by_score(shapes, density, dense, lambda s: (s[0] + s[1]) / (s[0] * s[1]) if len(s) > 1 else 1.0)


def _igq_quotas(sizes: Mapping[str, int], left: int, sparse: list[str]) -> dict[str, float]:
    pool = sum(sizes[n] for n in sparse)

    def kept(f: float) -> float:
        return sum(sizes[n] / (1.0 + f * sizes[n]) for n in sparse)

    if left >= pool:
        return {n: float(sizes[n]) for n in sparse}
    if left == 0:
        return {n: 0.0 for n in sparse}
    lo, hi = 0.0, 1.0
    while kept(hi) > left:  # kept() falls monotonically from `pool` at F=0 towards 0
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if kept(mid) > left else (lo, mid)
    f = 0.5 * (lo + hi)
    return {n: sizes[n] / (1.0 + f * sizes[n]) for n in sparse}


def igq(shapes: Shapes, density: float, *, dense: Set[str] = frozenset()) -> dict[str, int]:
    """Ideal Gas Quotas: a layer of N weights keeps N / (1 + F * N); F > 0 is found by bisection.

    Large layers are compressed most; for large F every layer keeps about 1/F weights.
    """
    sizes, left, sparse = _budget(shapes, density, dense)
    return _with_dense(shapes, sizes, _round_quotas(_igq_quotas(sizes, left, sparse), sizes, left))


def igq_int(shapes: Shapes, density: float, *, dense: Set[str] = frozenset()) -> dict[str, int]:
    """IGQ with the reference's per-layer rounding (SW sparselearning): int(sparsity_l * N_l) weights
    zeroed in each layer, so the global count may miss round(density * total) by up to one per layer."""
    sizes, left, sparse = _budget(shapes, density, dense)
    quotas = _igq_quotas(sizes, left, sparse)
    return _with_dense(shapes, sizes, {n: sizes[n] - int((1.0 - quotas[n] / sizes[n]) * sizes[n]) for n in sparse})


ALLOCATORS: dict[str, Allocator] = {"uniform": uniform, "erk": erk, "erk_uncapped": erk_uncapped, "er": er, "igq": igq,
                                     "igq_int": igq_int}


def get_allocator(name: str, *, where: str = "allocation") -> Allocator:
    """The allocator registered under `name`; an unknown name is a ConfigError listing the valid ones."""
    try:
        return ALLOCATORS[name]
    except KeyError:
        raise ConfigError(f"{where}: unknown allocator {name!r}; valid: {', '.join(sorted(ALLOCATORS))}") from None
