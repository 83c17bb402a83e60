"""The registered methods: Flying Bird, Flying Bird+, SET, RigL, MEST, GraNet, each a preset of the
prune-and-grow core with at most one or two functions overridden, and each naming its source and defaults.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from pipeline.sparsity.select import topk_mask
from pipeline.sparsity.dst import presets
from pipeline.sparsity.dst.config import SparsityConfig
from pipeline.sparsity.dst.core import METHODS, DynamicSparsity, Layer, register, select_drop_grow
from pipeline.sparsity.dst.presets import (  # noqa: F401  (moved to the torch-free specs; still importable)
    GRANET_END, MEST_PHASES, AdaptiveConfig, GradualConfig, MemoryBoundConfig, MutationPhase)
from pipeline.sparsity.dst.schedule import Schedule, cubic_density

__all__ = ["METHODS", "DynamicSparsity", "Layer", "build_method", "fbp_signals", "register", "select_drop_grow"]


@register("flying_bird")
class FlyingBird(presets.FlyingBirdSpec, DynamicSparsity):
    """Flying Bird (Chen et al., "Sparsity Winning Twice", ICLR 2022; spec §3.1-3.4, code defaults):
    IGQ allocation, random positions; every 900 steps (1200 in epochs > epochs/2) drop ceil(r * active)
    smallest |w| per layer and regrow as many at random; r cosine 0.5 -> 0.005 over all of training.
    Deviations, each one option away: growth is exact-count (the reference's Bernoulli growth matches it
    only in expectation: `grow_count: bernoulli`), and IGQ counts are rounded for an exact global total
    (the reference's per-layer int(): `init: igq_int`)."""


def fbp_signals(gap_history: list[float], loss_history: list[float], window: int) -> tuple[float, float] | None:
    """(prune_signal, grow_signal) over the last `window` differences: the fraction of rising robust gaps,
    and of val robust losses that did not fall. None until window + 1 values exist."""
    if len(gap_history) < window + 1 or len(loss_history) < window + 1:
        return None
    gaps, losses = gap_history[-(window + 1):], loss_history[-(window + 1):]
    prune = sum(1 for a, b in zip(gaps, gaps[1:]) if b - a > 0) / window
    grow = sum(1 for a, b in zip(losses, losses[1:]) if b - a >= 0) / window
    return prune, grow


def _scale_down(extra: dict[str, int], limit: int) -> dict[str, int]:
    total = sum(extra.values())
    if total <= limit:
        return extra
    return {n: (v * max(limit, 0)) // total for n, v in extra.items()}


def _signals_of(row: dict) -> tuple[float | None, float | None]:
    """(robust gap, val robust loss) of an evaluated epoch; the clean ones when RA is not measured."""
    if "train_acc" not in row:
        return None, None
    if "val_ra" in row and "val_robust_loss" in row:
        return row["train_acc"] - row["val_ra"], row["val_robust_loss"]
    if "val_sa" in row and "val_loss" in row:
        return row["train_acc"] - row["val_sa"], row["val_loss"]
    return None, None


@register("flying_bird_plus")
class FlyingBirdPlus(presets.FlyingBirdPlusSpec, FlyingBird):
    """Flying Bird+ (Chen et al., "Sparsity Winning Twice", ICLR 2022; spec §3.5): Flying Bird plus adaptive density from epoch 100 on. At each
    update, over the last 4 epoch-to-epoch differences: if >= 50% of robust-gap changes (train acc - val
    RA) are rises, prune ceil(r * 0.4 * active) more per layer; if >= 50% of val-robust-loss changes are
    not falls, regrow round((1 + 0.05) * count). Density floor/ceiling (ours; the reference has none)
    cap the extra pruning and growth so the global density stays within [min_density, max_density]."""

    def plan(self, step, state, layers, active, rate):
        counts, _ = super().plan(step, state, layers, active, rate)
        a = self.settings.adaptive
        signals = fbp_signals(state.extra["gap_history"], state.extra["loss_history"], a.window)
        info: dict[str, Any] = {"prune_signal": None, "grow_signal": None, "adaptive": False,
                                "extra_pruned": 0, "extra_grown": 0}
        if signals is None or self.schedule.epoch_of(step) < a.start_epoch:
            return counts, info
        prune_signal, grow_signal = signals
        info.update(prune_signal=prune_signal, grow_signal=grow_signal, adaptive=True)
        sizes = {l.name: l.size for l in layers}
        total, current = sum(sizes.values()), sum(active.values())
        extra_drop = {n: 0 for n in counts}
        extra_grow = {n: 0 for n in counts}
        if prune_signal >= a.prune_threshold:
            extra_drop = {n: min(math.ceil(rate * a.prune_ratio * active[n]), active[n] - k)
                          for n, (k, _) in counts.items()}
            # The floor holds even if no extra growth follows.
            extra_drop = _scale_down(extra_drop, current - math.ceil(a.min_density * total))
        if grow_signal >= a.grow_threshold:
            for n, (k, _) in counts.items():
                free = sizes[n] - (active[n] - k - extra_drop[n])
                extra_grow[n] = max(0, min(math.floor((1 + a.growth_ratio) * k + 0.5), free) - k)
            extra_grow = _scale_down(extra_grow, math.floor(a.max_density * total) - current)
        info.update(extra_pruned=sum(extra_drop.values()), extra_grown=sum(extra_grow.values()))
        return {n: (k + extra_drop[n], g + extra_grow[n]) for n, (k, g) in counts.items()}, info

    def initial_extra(self) -> dict[str, Any]:
        # train acc - val RA and val robust loss, one per evaluated epoch
        return {"gap_history": [], "loss_history": []}

    def end_epoch(self, state, epoch, row):
        gap, loss = _signals_of(row)
        if gap is not None and loss is not None:
            state.extra["gap_history"].append(gap)
            state.extra["loss_history"].append(loss)
        a = self.settings.adaptive
        signals = fbp_signals(state.extra["gap_history"], state.extra["loss_history"], a.window)
        row = {"fbp_active": epoch >= a.start_epoch and signals is not None}
        if signals is not None:
            row["fbp_prune_signal"], row["fbp_grow_signal"] = signals
        return row


@register("set")
class SET(presets.SETSpec, DynamicSparsity):
    """SET (Mocanu et al., Nature Communications 2018): Erdős–Rényi allocation, once per epoch drop the
    fraction zeta = 0.3 of smallest-|w| weights per layer (ceil, as sparselearning) and regrow as many at
    random; constant rate. The allocation is the sparselearning lineage's 'ER' for convs, epsilon *
    sum(weight.shape), kernel dimensions included: that is `erk` (which also caps a layer that would pass
    density 1, so the global count is exact; `erk_uncapped` is sparselearning's rule as written, `er`
    Mocanu's fully-connected (n_out + n_in) rule that ignores the kernel)."""


@register("rigl")
class RigL(presets.RigLSpec, DynamicSparsity):
    """RigL (Evci et al., ICML 2020): ERK, every 100 steps drop floor(alpha * active) smallest |w| (the
    int() of google-research/rigl, so a layer stops swapping once alpha * active < 1) and grow as many with
    the largest dense |grad| of the last batch; alpha = 0.3 cosine-decayed to 0 at T_end = 75% of
    training, no updates after it. SET with the grow criterion swapped (`grow: gradient`)."""


@register("mest")
class MEST(presets.MESTSpec, DynamicSparsity):
    """MEST (Yuan et al., NeurIPS 2021), elastic mutation with the soft memory bound (EM&S): at each update
    grow new weights per layer (density rises above target), let them train for `prune_after` of the
    interval, then prune each layer back to its exact target by magnitude, new weights included. Preset =
    MEST's script defaults (MEST_PHASES): every 5 epochs, growth 5% / 2.5% / 0% of the layer at 0 / 56% /
    75% of training, pruned back at the next update. The DST-vs-dense study's variant (landscape §A) is
    `update_every: 1000` steps, `memory_bound: {bound: 0.1, prune_after: 0.5, phases: null}`: growth
    min(ceil(r * target), floor(0.1 * target)) with r the drop_fraction schedule.
    Random growth (MEST_r; `grow: gradient` gives MEST_g). Pruning is by |w|, as MEST's retrain.py by
    default (--sp-lmd 0; the paper's score adds lambda |grad|). Updates follow steps 5, 10, ... epochs
    (MEST also mutates at the start of epoch 0). A grow phase is not started when its prune-back would
    fall after the last step."""

    def initial_extra(self) -> dict[str, Any]:
        return {"prune_back_at": None}  # step after which the grown weights are pruned back

    def _wait(self, step: int) -> int:
        return max(1, round(self.settings.memory_bound.prune_after * self.schedule.interval(step)))

    def grows_at(self, step: int) -> bool:
        return self.schedule.is_update(step) and step + self._wait(step) <= self.schedule.total_steps - 1

    def growth(self, step: int, target: int, size: int) -> tuple[int, float]:
        """(weights grown in a layer of `size` with `target` active, the fraction that set it)."""
        mb = self.settings.memory_bound
        if mb.phases is not None:
            progress = (step + 1) / self.schedule.total_steps
            fraction = [p.grow for p in mb.phases if p.start <= progress][-1]
            g = math.floor(fraction * size + 0.5)
        else:
            fraction = self.schedule.drop_fraction_at(step)
            g = math.ceil(fraction * target)
        if mb.bound is not None:
            g = min(g, math.floor(mb.bound * target))
        return g, fraction

    def on_step(self, step, state, layers, optimizer, grads):
        entries, extra = [], state.extra
        if extra["prune_back_at"] is not None and step >= extra["prune_back_at"]:
            active = {l.name: l.active() for l in layers}
            counts = {l.name: (active[l.name] - state.targets[l.name], 0) for l in layers
                      if active[l.name] > state.targets[l.name]}
            extra["prune_back_at"] = None
            entries.append(self.apply_counts(step, state, layers, optimizer, grads, counts, event="prune_back",
                                             rate=None))
        if self.grows_at(step):
            active = {l.name: l.active() for l in layers}
            counts, fraction = {}, None
            for layer in self.rewirable(layers, active):
                g, fraction = self.growth(step, state.targets[layer.name], layer.size)
                g = min(g, layer.size - active[layer.name])
                if g > 0:
                    counts[layer.name] = (0, g)
            if not counts:  # e.g. MEST's last phase grows nothing: no event, nothing to prune back
                return entries
            extra["prune_back_at"] = step + self._wait(step)
            targets = state.targets  # the grown weights sit above target until the prune-back
            entries.append(self.apply_counts(step, state, layers, optimizer, grads, counts, event="grow", rate=fraction,
                                             info={"prune_back_at": extra["prune_back_at"]}))
            state.targets = targets
        return entries


@register("granet")
class GraNet(presets.GraNetSpec, DynamicSparsity):
    """GraNet (Liu et al., NeurIPS 2021): start denser (ERK at `initial_density`), prune globally by
    magnitude along the cubic schedule d_t = d + (d0 - d)(1 - (t - t0)/(t1 - t0))^3 at every update
    between t0 and t1 (and at t1 itself, so the target is met exactly), and at every update also
    regenerate: drop ceil(r * active) smallest |w| per layer, regrow as many by dense |grad| (GraNet_g;
    `grow: gradient`; random gives GraNet_r). Reference code defaults: 1000 steps, r 0.5 cosine, pruning
    from epoch 0 to t1 = epoch 110 of 160 (VITA-Group/GraNet main.py argparse: --init-prune-epoch 0,
    --final-prune-epoch 110), i.e. end_fraction 0.6875; the DST-vs-dense study starts at density 0.8
    (landscape §A)."""

    def __init__(self, settings, density, schedule, *, seed):
        super().__init__(settings, density, schedule, seed=seed)
        g = settings.gradual
        total = schedule.total_steps
        self.t0 = math.floor(g.start_fraction * total)
        self.t1 = max(self.t0 + 1, min(total, round(g.end_fraction * total)))

    @property
    def initial_density(self) -> float:
        return self.settings.gradual.initial_density

    def prunes_at(self, step: int) -> bool:
        c = step + 1
        return self.t0 < c <= self.t1 and (c % self.schedule.interval(step) == 0 or c == self.t1)

    def on_step(self, step, state, layers, optimizer, grads):
        entries = []
        if self.prunes_at(step):
            entry = self._gradual_prune(step, state, layers, optimizer)
            if entry is not None:
                entries.append(entry)
        return entries + super().on_step(step, state, layers, optimizer, grads)

    def target_density(self, step: int) -> float:
        return cubic_density(step + 1, start=self.t0, end=self.t1, initial=self.initial_density, final=self.density)

    def _gradual_prune(self, step, state, layers, optimizer) -> dict[str, Any] | None:
        d = self.target_density(step)
        free = [l for l in layers if not l.frozen]
        total = sum(l.size for l in layers)
        keep = round(d * total) - sum(l.size for l in layers if l.frozen)
        if keep >= sum(l.active() for l in free):
            return None
        scores = torch.cat([l.param.detach().abs().reshape(-1).masked_fill(~l.mask.reshape(-1), -math.inf)
                            for l in free])
        flat = topk_mask(scores, max(keep, 0))
        kept, start = {}, 0
        for l in free:
            kept[l.name] = flat[start:start + l.size].view(l.mask.shape)
            start += l.size
        return self.apply_masks(step, state, layers, optimizer, kept, event="gradual_prune", info={"target_density": d})


def build_method(name: str, settings: SparsityConfig, density: float, schedule: Schedule, *, seed: int) -> DynamicSparsity:
    cls = METHODS.get(name)
    if cls is None:
        raise ValueError(f"unknown sparsity method {name!r}; valid: {', '.join(METHODS)}")
    return cls(settings, density, schedule, seed=seed)
