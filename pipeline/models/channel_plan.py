"""Which channels to remove: importance per coupled group, then the cut that meets a MACs or channel target.

Importance is computed by torch-pruning's group criteria over every layer of a group (so a residual
stream is ranked as one), normalised by the group mean so that groups compare in a global ranking:
- `l1` / `l2`: magnitude of the (masked) weights, i.e. mask-weighted: pruned weights count as zero;
- `bn_scale`: |gamma| of the batch norms in the group (groups without one fall back to `l2`);
- `taylor`: first-order |w * dL/dw| with dL/dw from adversarial examples of the given attack, so the
  channels kept are the ones the robust loss depends on.

The MACs of a candidate cut are computed exactly from the group index maps (a layer's MACs scale with
its kept input and output channels), so the search over cuts needs no re-tracing; the stage counts the
real MACs of the pruned module afterwards.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from pipeline.metrics.flops import count_macs
from pipeline.models.structure import channel_groups, module_names, root_of

from pipeline.models.channel_config import CRITERIA  # noqa: F401  (moved; still importable)


@dataclass
class Group:
    root: nn.Module
    name: str
    size: int
    floor: int  # channels that must stay
    order: torch.Tensor  # root channel indices, least important first
    score: torch.Tensor  # normalised importance in `order`
    # (layer name, "out" | "in", root index of each of the layer's channels in this group)
    members: list[tuple[str, str, torch.Tensor]]


def _importance(criterion: str) -> tp.importance.Importance:
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if criterion == "bn_scale":
        return tp.importance.BNScaleImportance()
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"unknown importance {criterion!r}; valid: {', '.join(CRITERIA)}")


def adversarial_gradients(model: nn.Module, batches, attack: Callable | None, generator=None) -> None:
    """Accumulate dL/dw of the cross-entropy on attacked batches into .grad (eval mode: BN statistics fixed)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        for x, y in batches:
            x_in = attack(model, x, y, generator) if attack is not None else x
            loss = nn.functional.cross_entropy(model(x_in), y)
            loss.backward()
    finally:
        for m, training in modes.items():
            m.training = training


def plan_groups(model: nn.Module, graph: tp.DependencyGraph, criterion: str = "l2",
                min_keep: float = 0.1, original_sizes: dict[str, int] | None = None,
                round_to: int = 1) -> list[Group]:
    """The prunable groups of `model`, ranked. `min_keep` of each group's original channels stay."""
    imp, fallback = _importance(criterion), _importance("l2")
    names = module_names(model)
    out = []
    for group in channel_groups(model, graph):
        root = root_of(group)
        with torch.no_grad():
            score = imp(group)
            if score is None:  # bn_scale on a group without a batch norm
                score = fallback(group)
        score = score.detach().float().cpu()
        size = len(group[0].idxs)
        original = (original_sizes or {}).get(names[root], size)
        floor = min(size, max(1, math.ceil(min_keep * original)))
        floor = min(size, math.ceil(floor / round_to) * round_to) if round_to > 1 else floor
        order = torch.argsort(score, stable=True)
        members = []
        for item in group.items:
            mod = item.dep.target.module
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                side = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
                members.append((names[mod], side, torch.as_tensor(item.root_idxs, dtype=torch.long)))
        out.append(Group(root, names[root], size, floor, order, score[order], members))
    return out


class MacsModel:
    """Exact per-image MACs of the network after removing root channels from groups."""

    def __init__(self, model: nn.Module, input_shape, groups: list[Group]):
        self.layers = {lm.module: lm for lm in count_macs(model, tuple(input_shape))}
        mods = dict(model.named_modules())
        self.size = {n: (_in_size(mods[n]), _out_size(mods[n])) for n in self.layers}
        self.groups = groups
        self.dense = sum(lm.macs for lm in self.layers.values())

    def macs(self, removed: list[torch.Tensor]) -> int:
        """`removed[g]`: bool over group g's root channels."""
        kept_in = {n: s[0] for n, s in self.size.items()}
        kept_out = {n: s[1] for n, s in self.size.items()}
        for g, mask in zip(self.groups, removed):
            for name, side, roots in g.members:
                if name not in kept_in:
                    continue
                cut = int(mask[roots].sum())
                if side == "out":
                    kept_out[name] -= cut
                else:
                    kept_in[name] -= cut
        total = 0.0
        for name, lm in self.layers.items():
            cin, cout = self.size[name]
            total += lm.macs * (kept_in[name] / cin) * (kept_out[name] / cout)
        return int(round(total))


def _in_size(m: nn.Module) -> int:
    return m.in_channels if isinstance(m, nn.Conv2d) else m.in_features


def _out_size(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def _removal(groups: list[Group], counts: list[int]) -> list[torch.Tensor]:
    masks = []
    for g, k in zip(groups, counts):
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[g.order[:k]] = True
        masks.append(mask)
    return masks


def _rounded(g: Group, k: int, round_to: int) -> int:
    k = min(max(k, 0), g.size - g.floor)
    if round_to > 1:  # kept channels a multiple of round_to (vector-friendly widths)
        kept = math.ceil((g.size - k) / round_to) * round_to
        k = max(0, g.size - min(g.size, kept))
    return k


def counts_for(groups: list[Group], scope: str, amount: float, round_to: int = 1) -> list[int]:
    """Channels removed per group for a fraction `amount` in [0, 1] of what may be removed.

    per_layer: every group loses the same fraction of its channels (above the floor). global: one
    threshold on the normalised importance over all groups, taking the `amount` least important of all
    removable channels."""
    if scope == "per_layer":
        return [_rounded(g, int(math.floor(amount * g.size + 1e-9)), round_to) for g in groups]
    pool = [(float(g.score[i]), gi, i) for gi, g in enumerate(groups) for i in range(g.size - g.floor)]
    pool.sort()
    take = int(round(amount * len(pool)))
    counts = [0] * len(groups)
    for _, gi, _ in pool[:take]:
        counts[gi] += 1
    return [_rounded(g, k, round_to) for g, k in zip(groups, counts)]


def search(groups: list[Group], macs_model: MacsModel, *, scope: str, target_macs: int | None = None,
           target_channels: int | None = None, round_to: int = 1, iters: int = 40) -> list[torch.Tensor]:
    """The removal masks whose MACs (or total kept channels) come closest to the target (bisection on
    the removed fraction; both are monotone in it)."""
    total = sum(g.size for g in groups)

    def value(amount: float) -> int:
        counts = counts_for(groups, scope, amount, round_to)
        if target_macs is not None:
            return macs_model.macs(_removal(groups, counts))
        return total - sum(counts)

    target = target_macs if target_macs is not None else target_channels
    lo, hi = 0.0, 1.0
    best = min((lo, hi), key=lambda a: abs(value(a) - target))
    for _ in range(iters):
        mid = (lo + hi) / 2
        v = value(mid)
        if abs(v - target) < abs(value(best) - target):
            best = mid
        if v > target:
            lo = mid
        else:
            hi = mid
    counts = _refine(groups, counts_for(groups, scope, best, round_to), value_of=lambda c: (
        macs_model.macs(_removal(groups, c)) if target_macs is not None else total - sum(c)), target=target,
        step=round_to)
    return _removal(groups, counts)


def _refine(groups: list[Group], counts: list[int], *, value_of, target: int, step: int, rounds: int = 50) -> list[int]:
    """Move single groups by one width step while that brings the value closer to the target: rounded
    widths make the bisection's steps coarse, and a neighbouring combination is often much closer."""
    counts = list(counts)
    best = abs(value_of(counts) - target)
    for _ in range(rounds):
        improved = False
        for i, g in enumerate(groups):
            for delta in (step, -step):
                k = _rounded(g, counts[i] + delta, step)
                if k == counts[i]:
                    continue
                trial = counts[:i] + [k] + counts[i + 1:]
                miss = abs(value_of(trial) - target)
                if miss < best:
                    counts, best, improved = trial, miss, True
        if not improved:
            break
    return counts


def prune_to_target(model: nn.Module, graph: tp.DependencyGraph, input_shape, *, target_macs: int | None = None,
                    target_channels: int | None = None, scope: str = "global", importance: str = "l2",
                    min_keep: float = 0.1, original_sizes: dict[str, int] | None = None,
                    round_to: int = 1) -> list[dict]:
    """One pruning step: rank, search the cut nearest the target, remove it (in place). Returns the steps
    (also appended to the model's structure history). For `taylor`, .grad must hold dL/dw already."""
    from pipeline.models.structure import prune_groups

    groups = plan_groups(model, graph, importance, min_keep, original_sizes, round_to)
    removed = search(groups, MacsModel(model, input_shape, groups), scope=scope, round_to=round_to,
                     target_macs=target_macs, target_channels=target_channels)
    model.zero_grad(set_to_none=True)
    return prune_groups(model, graph, [(g.root, torch.nonzero(m).flatten().tolist()) for g, m in zip(groups, removed)])
