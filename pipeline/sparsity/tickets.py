"""Static tickets: masks from a `criterion:` block, the hooks that keep a ticket's mask while it trains,
rewind points, and reading one IMP round's ticket back.

Shared by the `early_bird` and `imp` stages; any stage may load an IMP round through `load_round`
(stages do not import each other).

Criteria come from `pipeline.sparsity.criteria.CRITERIA`: a global one (global_magnitude, random,
taylor) scores the weights of `scope` and keeps the exact global top-k; an nni one (level, l1, l2,
fpgm) ranks per layer (or per filter) through nni's pruners, where without a `config_list` every layer
of the scope gets the target sparsity.
"""
from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline.engine import distributed
from pipeline.engine.errors import CheckpointError, ConfigError
from pipeline.sparsity.criteria import CRITERIA, get_criterion
from pipeline.sparsity.hooks import MaskHooks
from pipeline.sparsity.masks import MaskSet, prunable_params
from pipeline.train.hooks import cpu_state

if TYPE_CHECKING:
    from pipeline.engine.rundir import StageRecord

from pipeline.sparsity.ticket_config import (  # noqa: F401  (moved; the old names stay importable)
    _SCOPE_KEYS, SCOPE_KINDS, CriterionConfig, Scope, rewind_epoch)


def scope_params(model: nn.Module, criterion: CriterionConfig | None = None, *, scope: Scope | None = None,
                 dense_first: bool | None = None, dense_last: bool | None = None) -> dict[str, nn.Parameter]:
    """The weights a criterion ranks (keyword arguments override the criterion's)."""
    scope = scope or (criterion.scope if criterion else "conv_linear")
    first = dense_first if dense_first is not None else bool(criterion and criterion.dense_first)
    last = dense_last if dense_last is not None else bool(criterion and criterion.dense_last)
    return prunable_params(model, include=SCOPE_KINDS[scope], dense_first=first, dense_last=last)


def ticket_masks(model: nn.Module, criterion: CriterionConfig, density: float, *, within: MaskSet | None = None,
                 generator: torch.Generator | None = None, where: str = "criterion", batches=None,
                 pruner: str | None = None) -> MaskSet:
    """Masks keeping `density` of the criterion's weights (for nni entries without their own sparse_ratio).

    `within` (IMP): only its kept entries compete, so the result is a subset of it and `density` stays
    relative to all weights (IMP round k passes (1 - p)^k). `random` needs `generator`, `taylor` needs
    `batches` (see `criterion_batches`). `pruner` ranks by another registered criterion over the same
    scope (imp's random baseline). `where` is the config path used in error messages.
    """
    entry = get_criterion(pruner or criterion.pruner)
    if entry.nni_pruner is not None:
        masks = _nni_masks(model, criterion, density, within, where, entry.nni_pruner)
        distributed.sync_masks(masks, where)
        return masks
    params = scope_params(model, criterion)
    if not params:
        raise ConfigError(f"{where}.scope: the model has no {criterion.scope} weights to prune")
    entry.check_inputs(batches=batches, generator=generator)  # a caller's slip, not a config error
    try:
        masks = entry.global_masks(model, params, density, within=within, batches=batches, generator=generator)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    distributed.sync_masks(masks, where)  # early-bird tickets, IMP rounds, OMP / random masks
    return masks


def criterion_batches(criterion: CriterionConfig, data, *, batch_size: int, seed: int, device) -> list | None:
    """The clean, non-augmented training batches a data-driven criterion scores on (None for the others).
    Drawn in a fixed shuffled order of the run seed, so a resumed or repeated run scores the same images."""
    if not CRITERIA[criterion.pruner].needs_batches:
        return None
    from pipeline.data import train_batches

    if len(data.train_x) != len(data.train_y):  # streamed: the training images stay on disk
        raise ConfigError(f"criterion.pruner: taylor scores in-memory training batches; {data.source} is "
                          "streamed (data.stream); use global_magnitude or random")
    it = train_batches(data.train_x, data.train_y, batch_size=batch_size, seed=seed, epoch=-1, augment="none",
                       crop_padding=0, device=device)
    return [b for _, b in zip(range(criterion.taylor_batches), it)]


def check_criterion(model: nn.Module, criterion: CriterionConfig, density: float, where: str = "criterion") -> None:
    """Cut one throw-away mask now, so a config_list nni rejects fails before any training, not after it."""
    if CRITERIA[criterion.pruner].nni_pruner is not None:
        _nni_masks(model, criterion, density, None, where, CRITERIA[criterion.pruner].nni_pruner)


def _nni_masks(model: nn.Module, criterion: CriterionConfig, density: float, within: MaskSet | None,
               where: str, pruner: str) -> MaskSet:
    from pipeline.sparsity.nni_criteria import criterion_masks

    sparsity = 1.0 - density
    if criterion.config_list is None:
        names = [n.removesuffix(".weight") for n in scope_params(model, criterion)]
        config_list = [{"op_names": names, "sparse_ratio": sparsity}]
    else:
        config_list = [entry if "sparse_ratio" in entry else {**entry, "sparse_ratio": sparsity}
                       for entry in criterion.config_list]
    work = model
    if within is not None:  # pruned weights must rank last whatever the model holds there
        work = copy.deepcopy(model)
        within.apply_(work)
    try:
        masks = criterion_masks(work, pruner=pruner, config_list=config_list)
    except ConfigError as exc:
        raise ConfigError([f"{where}.{p}" for p in exc.problems]) from None
    if within is None:
        return masks
    if list(masks) != list(within):
        raise ConfigError(f"{where}: the nni pruner masked layers {list(masks)}, but the previous mask covers "
                          f"{list(within)}; keep config_list the same across rounds")
    return MaskSet({n: m & within[n].to(m.device) for n, m in masks.items()})


# ---------------------------------------------------------------------------------------------- rewinding

class TicketHooks(MaskHooks):
    """Training hooks of a ticket: keep `masks` in force (weights and momentum re-zeroed after every
    step, through MaskHooks' cached enforcer; None = dense) and take a snapshot of the whole state (BN
    statistics included) at the end of epoch `snapshot_epoch` (0 = the starting weights) for rewinding.
    A snapshot of a later epoch is part of the progress state, so it survives a resume; the starting
    weights are rebuilt by the stage.
    """

    def __init__(self, masks: MaskSet | None = None, snapshot_epoch: int | None = None):
        super().__init__(masks)
        self.snapshot_epoch = snapshot_epoch
        self.snapshot: dict[str, torch.Tensor] | None = None

    def on_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self.snapshot_epoch == 0:
            self.snapshot = cpu_state(model)  # before the mask: the starting weights as they were
        super().on_start(model, optimizer)

    def end_epoch(self, epoch: int, row: dict) -> bool:
        if self.masks is not None:
            row["density"] = self.masks.density()
        if self.snapshot_epoch is not None and self.snapshot_epoch == epoch + 1:
            self.snapshot = cpu_state(self.model)
        return False

    def state_dict(self) -> dict:
        later = self.snapshot is not None and self.snapshot_epoch not in (None, 0)
        return {"snapshot": dict(self.snapshot) if later else None}

    def load_state_dict(self, state: dict) -> None:
        if state.get("snapshot") is not None:
            self.snapshot = dict(state["snapshot"])


# ---------------------------------------------------------------------------------------------- IMP rounds

def round_files(k: int) -> tuple[str, str]:
    """File names of IMP round k's ticket in its stage folder: weights and masks."""
    return f"round_{k:02d}.safetensors", f"round_{k:02d}.masks.safetensors"


def round_metadata(arch: str, stage: str, k: int) -> dict[str, str]:
    return {"pipeline": json.dumps({"arch": arch, "round": k, "stage": stage}, sort_keys=True)}


def load_round(stage: StageRecord, k: int, device: torch.device | str = "cpu"):
    """(model, masks, card) of round k of a finished `imp` stage, for a downstream stage that picks a
    round other than the one the stage selected (e.g. a `ticket: k` option)."""
    rounds = {r["round"]: r for r in (stage.section("imp") or {}).get("rounds", []) if r.get("files")}
    if k not in rounds:
        raise CheckpointError(f"stage {stage.name!r} has no ticket of round {k} "
                              f"(rounds with tickets: {sorted(rounds) or 'none'})")
    weights, _ = round_files(k)
    return stage.load_model(device, weights=weights)  # round_KK.masks.safetensors comes along
