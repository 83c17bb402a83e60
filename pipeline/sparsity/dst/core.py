"""The prune-and-grow core that every dynamic sparse training method subclasses.

The base class `DynamicSparsity` drops the smallest-|w| active weights of each layer and grows as many
new ones (random, or largest dense |grad| of the last batch), so every layer keeps its count exactly.
"When" and "what fraction" come from `Schedule`; "how much per layer" from `plan`; "which entries"
from `drop_scores` / `grow_scores` and the exact top-k selector. A method overrides only what differs:
Flying Bird+ its `plan` and `end_epoch`, MEST and GraNet their `on_step` (see `methods`). Register a new
one with `@register("name")`; `preset(epochs)` gives the values its `sparsity:` block defaults to,
`Settings` its own knobs and `initial_extra` its own resumable state.

Grown weights start at 0 with optimizer state 0; dropped weights are zeroed with their optimizer state.
Random growth draws from a CPU generator derived from (seed, step, layer), so topologies do not depend
on the device and a resumed run regrows the same connections.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.sparsity.allocation import get_allocator
from pipeline.sparsity.masks import MaskSet, prunable_params
from pipeline.engine.seeding import Stream, derived_generator
from pipeline.sparsity.select import random_mask, topk_mask
from pipeline.sparsity.dst.config import SparsityConfig
from pipeline.sparsity.dst.presets import MethodSpec
from pipeline.sparsity.dst.registry import METHODS, register  # noqa: F401  (re-exported)
from pipeline.sparsity.dst.schedule import Schedule
from pipeline.sparsity.dst.state import DSTState

@dataclass
class Layer:
    """One masked weight as the method sees it; `mask` is the MaskSet's own tensor, changed in place."""

    name: str
    index: int
    param: Tensor
    mask: Tensor
    frozen: bool = False  # dense_first / dense_last: never rewired

    def active(self) -> int:
        return int(torch.count_nonzero(self.mask))  # much faster than a bool sum on CPU

    @property
    def size(self) -> int:
        return self.mask.numel()


def select_drop_grow(mask: Tensor, n_drop: int, n_grow: int, drop_scores: Tensor,
                     grow_scores: Tensor | None) -> tuple[Tensor, Tensor]:
    """(kept, grown): `kept` = the active entries minus the n_drop with the lowest drop score; `grown` =
    the n_grow entries outside `kept` (just-dropped ones included) with the highest grow score.
    Exact counts; ties go to the lower flat index."""
    flat = mask.reshape(-1)
    active_idx = torch.nonzero(flat).view(-1)  # ascending, so ties still go by flat index
    n_active = active_idx.numel()
    if not 0 <= n_drop <= n_active:
        raise ValueError(f"cannot drop {n_drop} of {n_active} active entries")
    if n_drop:
        # ranking only the active entries: several times less work than masking the whole tensor
        survivors = topk_mask(drop_scores.reshape(-1)[active_idx], n_active - n_drop)
        kept = torch.zeros_like(flat)
        kept[active_idx[survivors]] = True
        kept = kept.view(mask.shape)
    else:
        kept = mask.clone()
    if n_grow == 0:
        return kept, torch.zeros_like(mask)
    free = mask.numel() - (n_active - n_drop)
    if n_grow > free:
        raise ValueError(f"cannot grow {n_grow} entries with only {free} inactive")
    if grow_scores is None:
        raise ValueError("growth needs scores")
    return kept, topk_mask(grow_scores.float().masked_fill(kept, -math.inf), n_grow)


class DynamicSparsity(MethodSpec):
    """Prune-and-grow with per-layer counts conserved exactly (SET / RigL / Flying Bird core).

    A method declares what it adds, never edits shared classes: `Settings` (its `sparsity:` block: the
    common knobs plus its own sub-block), `initial_extra()` (its own resumable state, kept in
    `DSTState.extra`) and `end_epoch` (per-epoch signals and history-row keys). `name`, `Settings`,
    `preset`, `check` and `example` come from MethodSpec (dst.presets, torch-free: configs validate there).
    """

    def __init__(self, settings: SparsityConfig, density: float, schedule: Schedule, *, seed: int):
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        if not isinstance(settings, self.Settings):
            raise TypeError(f"{self.name} needs {self.Settings.__name__} settings, got {type(settings).__name__}")
        self.check(settings, density)
        self.settings, self.density, self.schedule, self.seed = settings, density, schedule, seed

    # -- start ------------------------------------------------------------------------------------
    @property
    def initial_density(self) -> float:
        return self.density

    def initial_extra(self) -> dict[str, Any]:
        """The method's own state at the start (plain values or tensors: it is saved weights-only)."""
        return {}

    def dense_layers(self, model: nn.Module) -> frozenset[str]:
        """Masked weights never rewired and kept dense (dense_first / dense_last)."""
        s = self.settings
        params = prunable_params(model)
        return frozenset(params) - frozenset(prunable_params(model, dense_first=s.dense_first, dense_last=s.dense_last))

    def start(self, model: nn.Module) -> DSTState:
        """The state at step 0: initial masks, the dense layers and the method's own extra state."""
        frozen = self.dense_layers(model)
        return DSTState.start(self.initial_masks(model, frozen), frozen=frozen, extra=self.initial_extra())

    def initial_masks(self, model: nn.Module, frozen: frozenset[str] = frozenset()) -> MaskSet:
        """Per-layer counts from the allocator (exact global count, `frozen` layers dense), positions
        random under the seed or by magnitude."""
        params = prunable_params(model)
        shapes = {n: tuple(p.shape) for n, p in params.items()}
        counts = get_allocator(self.settings.init, where="sparsity.init")(shapes, self.initial_density, dense=frozen)
        masks = {}
        for i, (name, p) in enumerate(params.items()):
            if self.settings.init_positions == "magnitude":
                masks[name] = topk_mask(p.detach().abs(), counts[name])
            else:
                masks[name] = random_mask(p.shape, counts[name], derived_generator(self.seed, Stream.DST_INIT, i)).to(p.device)
        return MaskSet(masks)

    # -- which ------------------------------------------------------------------------------------
    def drop_scores(self, layer: Layer) -> Tensor:
        return layer.param.detach().abs()

    def grow_scores(self, layer: Layer, grad: Tensor | None, step: int) -> Tensor:
        if self.settings.grow == "gradient":
            if grad is None:
                raise RuntimeError(f"gradient growth at step {step} but no gradient was kept for {layer.name}")
            return grad.abs()
        gen = derived_generator(self.seed, Stream.DST_GROW, step, layer.index)
        return torch.rand(layer.mask.shape, generator=gen).to(layer.mask.device)

    # -- when -------------------------------------------------------------------------------------
    def grows_at(self, step: int) -> bool:
        return self.schedule.is_update(step)

    def needs_gradient(self, step: int) -> bool:
        """True when this step's growth reads the dense gradient (kept in after_backward; charged as FLOPs)."""
        return self.settings.grow == "gradient" and self.grows_at(step)

    # -- how much ---------------------------------------------------------------------------------
    def rewirable(self, layers: list[Layer], active: Mapping[str, int]) -> list[Layer]:
        """Layers that take part in prune-and-grow: not frozen, neither empty nor fully dense."""
        return [l for l in layers if not l.frozen and 0 < active[l.name] < l.size]

    def plan(self, step: int, state: DSTState, layers: list[Layer], active: Mapping[str, int],
             rate: float) -> tuple[dict[str, tuple[int, int]], dict[str, Any]]:
        """{layer: (n_drop, n_grow)} for one update, plus method-specific log fields."""
        out = {}
        for layer in self.rewirable(layers, active):
            k = min(self.drop_count(rate, active[layer.name]), active[layer.name])
            out[layer.name] = (k, k)
        return out, {}

    def drop_count(self, rate: float, active: int) -> int:
        """Weights a layer with `active` entries drops at drop fraction `rate` (`drop_count`: ceil or floor)."""
        product = rate * active
        return math.floor(product) if self.settings.drop_count == "floor" else math.ceil(product)

    # -- one step ---------------------------------------------------------------------------------
    def on_step(self, step: int, state: DSTState, layers: list[Layer], optimizer: torch.optim.Optimizer | None,
                grads: Mapping[str, Tensor] | None) -> list[dict[str, Any]]:
        """Run whatever topology events fall on this step; one log entry per event."""
        if not self.schedule.is_update(step):
            return []
        rate = self.schedule.drop_fraction_at(step)
        active = {l.name: l.active() for l in layers}
        counts, info = self.plan(step, state, layers, active, rate)
        return [self.apply_counts(step, state, layers, optimizer, grads, counts, event="prune_grow", rate=rate, info=info)]

    def apply_counts(self, step: int, state: DSTState, layers: list[Layer], optimizer: torch.optim.Optimizer | None,
                     grads: Mapping[str, Tensor] | None, counts: Mapping[str, tuple[int, int]], *, event: str,
                     rate: float | None, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One event given per-layer (n_drop, n_grow): drop the lowest `drop_scores` among the active
        entries, grow the highest `grow_scores` outside the survivors."""
        new_masks = {}
        for layer in layers:
            n_drop, n_grow = counts.get(layer.name, (0, 0))
            if n_drop or n_grow:
                grow = self.grow_scores(layer, (grads or {}).get(layer.name), step) if n_grow else None
                kept, grown = select_drop_grow(layer.mask, n_drop, n_grow, self.drop_scores(layer), grow)
                if n_grow and self.settings.grow_count == "bernoulli":
                    # the same uniform draws, thresholded: every free entry on with p = n_grow / free
                    free = ~kept
                    grown = free & (grow < n_grow / int(torch.count_nonzero(free)))
                    n_grow = int(torch.count_nonzero(grown))
                new_masks[layer.name] = (kept, kept | grown, n_drop, n_grow)
        return self._commit(step, state, layers, optimizer, new_masks, event=event, rate=rate, info=info)

    def apply_masks(self, step: int, state: DSTState, layers: list[Layer], optimizer: torch.optim.Optimizer | None,
                    kept: Mapping[str, Tensor], *, event: str, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One pruning event given the surviving entries of some layers (a subset of their masks)."""
        new_masks = {}
        for layer in layers:
            if layer.name in kept:
                mask = kept[layer.name]
                new_masks[layer.name] = (mask, mask, layer.active() - int(torch.count_nonzero(mask)), 0)
        return self._commit(step, state, layers, optimizer, new_masks, event=event, rate=None, info=info)

    def _commit(self, step: int, state: DSTState, layers: list[Layer], optimizer: torch.optim.Optimizer | None,
                new_masks: Mapping[str, tuple[Tensor, Tensor, int, int]], *, event: str, rate: float | None,
                info: Mapping[str, Any] | None) -> dict[str, Any]:
        """Every topology change passes here: zero the weights and optimizer state outside the survivors,
        write the new masks in place, set the per-layer targets to the new counts, log the event."""
        dropped = grown = changed = 0
        layer_changed = {}
        counts_now = {}
        for layer in layers:
            n_active = layer.active()
            if layer.name not in new_masks:
                counts_now[layer.name] = n_active
                continue
            kept, after, n_drop, n_grow = new_masks[layer.name]
            _zero_outside_(layer.param, kept, optimizer)
            flips = int(torch.count_nonzero(after ^ layer.mask))
            layer.mask.copy_(after)
            state.ever_active[layer.name].logical_or_(after)
            counts_now[layer.name] = n_active - n_drop + n_grow
            dropped, grown, changed = dropped + n_drop, grown + n_grow, changed + flips
            layer_changed[layer.name] = flips
        state.targets = dict(counts_now)
        total = sum(l.size for l in layers)
        state.events += 1
        state.changed_total += changed
        state.changed_epoch += changed
        entry = {"event_index": state.events, "event": event, "step": step, "epoch": self.schedule.epoch_of(step),
                 "drop_fraction": rate, "dropped": dropped, "grown": grown, "changed": changed,
                 "density": sum(counts_now.values()) / total, "ever_active": state.ever_active_fraction(),
                 **(info or {}),
                 "layer_density": {l.name: counts_now[l.name] / l.size for l in layers},
                 "layer_changed": layer_changed}
        state.log.append(entry)
        return entry

    # -- per epoch --------------------------------------------------------------------------------
    def end_epoch(self, state: DSTState, epoch: int, row: Mapping[str, Any]) -> dict[str, Any]:
        """Called once per epoch with its (evaluated) history row: update the method's own signals in
        `state.extra` and return the keys it adds to the row."""
        return {}


@torch.no_grad()
def _zero_outside_(param: Tensor, kept: Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    keep = kept.to(param.dtype)
    param.mul_(keep)
    if optimizer is not None:
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, Tensor) and value.shape == param.shape:
                value.mul_(keep)
