"""channel_prune: a dense model or an unstructured ticket made physically smaller (torch-pruning groups).

The network's coupled channel groups are ranked (mask-weighted L1/L2, batch-norm scale, or first-order
Taylor saliency on adversarial examples of `attack`) and the least important channels are removed until
the target is met: `macs_ratio` (fraction of the input model's MACs kept) or `channel_sparsity`
(fraction of prunable channels removed), globally or the same fraction per layer, never below the
per-layer floor `min_keep`. With `steps` > 1 the cut is made in stages, re-ranking after each one.
The result is stored as weights + masks (sliced like the weights) + structure.json; a following
`finetune` stage wins back accuracy.
"""
from __future__ import annotations

import copy
import os
import signal
from typing import Literal

from pydantic import Field, model_validator

from pipeline.engine.errors import StageFailed
from pipeline.engine.schema import StrictModel
from pipeline.engine.stage import Stage, StageConfig
from pipeline.metrics.attack_config import AttackConfig
from pipeline.models.channel_config import CRITERIA

# The implementation (torch) is imported where it runs: `validate` and `stages` import this module for its Config.


class TaylorConfig(StrictModel):
    batches: int = Field(default=4, gt=0, description="training batches whose adversarial loss gives dL/dw")
    batch_size: int = Field(default=64, gt=0)
    attack: AttackConfig = Field(default_factory=AttackConfig, description="the training attack (kind none: clean)")


class ChannelPruneConfig(StageConfig):
    macs_ratio: float | None = Field(default=None, gt=0, lt=1,
                                     description="fraction of the input model's MACs kept (0.25 = a 4x cut)")
    channel_sparsity: float | None = Field(default=None, gt=0, lt=1,
                                           description="fraction of the prunable channels removed")
    scope: Literal["global", "per_layer"] = Field(
        default="global", description="one importance threshold over all layers, or the same fraction per layer")
    importance: Literal[CRITERIA] = Field(default="l2", description="l1 | l2 (mask-weighted) | bn_scale | taylor")
    min_keep: float = Field(default=0.1, gt=0, le=1, description="per-layer floor: fraction of each layer's channels kept")
    round_to: int = Field(default=1, ge=1, description="kept channels per layer a multiple of this (e.g. 8)")
    steps: int = Field(default=1, ge=1, description="iterative pruning: cut in this many steps, re-ranking after each")
    tolerance: float = Field(default=0.02, gt=0, description="allowed relative miss of the MACs / channel target")
    taylor: TaylorConfig = Field(default_factory=TaylorConfig, description="for importance: taylor")

    @model_validator(mode="after")
    def _one_target(self):
        if (self.macs_ratio is None) == (self.channel_sparsity is None):
            raise ValueError("set exactly one of macs_ratio and channel_sparsity")
        return self


_FAULT_AFTER_STEPS = int(os.environ.get("PIPELINE_FAULT_AFTER_STEPS", "0") or 0)


class ChannelPrune(Stage):
    Config = ChannelPruneConfig
    summary = "structured channel pruning to a MACs or channel target (torch-pruning groups); stores structure.json"

    def run(self, ctx) -> None:
        from pipeline.models.channel_plan import plan_groups, prune_to_target
        from pipeline.models.structure import FORMAT, apply_structure, dependency_graph, steps_of

        cfg: ChannelPruneConfig = ctx.config
        model, masks, card = ctx.load_input_model()
        shape = (card["in_chans"], *card["input_size"])
        if masks is not None:
            masks.apply_(model)  # mask-weighted importance: pruned weights count as zero
        pristine = copy.deepcopy(model)
        base_steps = len(steps_of(model))
        base_macs = _macs(model, shape)
        graph = dependency_graph(model, shape)
        sizes = {g.name: g.size for g in plan_groups(model, graph, "l2", cfg.min_keep)}
        total_channels = sum(sizes.values())
        done = 0
        saved = ctx.load_progress()
        if saved is not None:  # replay the steps already made, then their weights
            done = saved["step"]
            apply_structure(model, {"format": FORMAT, "input_shape": list(shape), "steps": saved["structure"]})
            model.load_state_dict(saved["model"])
            graph = dependency_graph(model, shape)
        log = list(saved["log"]) if saved is not None else []
        for step in range(done + 1, cfg.steps + 1):
            frac = step / cfg.steps
            if cfg.macs_ratio is not None:
                target = dict(target_macs=int(round(base_macs * cfg.macs_ratio ** frac)))
            else:
                target = dict(target_channels=int(round(total_channels * (1 - cfg.channel_sparsity * frac))))
            if cfg.importance == "taylor":
                self._taylor_gradients(ctx, cfg, model, step)
            made = prune_to_target(model, graph, shape, scope=cfg.scope, importance=cfg.importance,
                                   min_keep=cfg.min_keep, original_sizes=sizes, round_to=cfg.round_to, **target)
            macs = _macs(model, shape)
            log.append({"step": step, **target, "macs": macs, "channels_removed": sum(len(s["removed"]) for s in made)})
            ctx.log(f"[{ctx.name}] step {step}/{cfg.steps}: {log[-1]['channels_removed']} channels removed, "
                    f"MACs {macs:,} ({macs / base_macs:.3f} of the input)")
            ctx.save_progress({"step": step, "structure": steps_of(model)[base_steps:], "log": log,
                               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}})
            if _FAULT_AFTER_STEPS and step == _FAULT_AFTER_STEPS:
                os.kill(os.getpid(), signal.SIGKILL)
        self._finish(ctx, cfg, model, pristine, masks, card, shape, base_macs, total_channels, log, base_steps)

    @staticmethod
    def _taylor_gradients(ctx, cfg: ChannelPruneConfig, model, step: int) -> None:
        import torch

        from pipeline.metrics.attacks import make_train_attack
        from pipeline.models.channel_plan import adversarial_gradients

        data = ctx.data()
        tc = cfg.taylor
        n = min(len(data.train_y), tc.batches * tc.batch_size)
        order = torch.randperm(len(data.train_y), generator=ctx.generator(17, step, device="cpu"))[:n]
        batches = [(data.train_x[idx].float().div(255.0).to(ctx.device), data.train_y[idx].long().to(ctx.device))
                   for idx in order.split(tc.batch_size)]
        adversarial_gradients(model, batches, make_train_attack(tc.attack), ctx.generator(18, step))

    @staticmethod
    def _finish(ctx, cfg, model, pristine, masks, card, shape, base_macs, total_channels, log, base_steps) -> None:
        import torch

        from pipeline.models.structure import FORMAT, slice_like, steps_of
        from pipeline.sparsity.masks import MaskSet

        new_steps = steps_of(model)[base_steps:]
        macs = _macs(model, shape)
        kept = {}
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                kept[name] = int(m.out_channels)
        if cfg.macs_ratio is not None:
            target, achieved, what = cfg.macs_ratio, macs / base_macs, "macs_ratio"
        else:
            removed = sum(len(s["removed"]) for s in new_steps)
            target, achieved, what = cfg.channel_sparsity, removed / max(total_channels, 1), "channel_sparsity"
        if abs(achieved - target) > cfg.tolerance * target:
            raise StageFailed(f"channel_prune: {what} target {target:g} missed: reached {achieved:.4f} "
                              f"(tolerance {cfg.tolerance:g} relative); lower min_keep or round_to, or use scope: global")
        sliced = None
        if masks is not None:
            record = {"format": FORMAT, "input_shape": list(shape), "steps": new_steps}
            sliced = MaskSet({k: v.bool() for k, v in slice_like(pristine, {k: v.float() for k, v in masks.items()},
                                                                 record).items()})
            sliced.apply_(model)
        params = sum(p.numel() for p in model.parameters())
        ctx.save_model(model, card, masks=sliced)
        ctx.record["channel_prune"] = {
            "target": {what: target}, "achieved": {what: achieved}, "scope": cfg.scope, "importance": cfg.importance,
            "min_keep": cfg.min_keep, "input_macs": base_macs, "macs": macs, "macs_cut": base_macs / macs,
            "params": params, "steps": log, "channels": kept}
        ctx.metrics.update({"macs": macs, "macs_ratio": macs / base_macs, "macs_cut": base_macs / macs,
                            "params": params, "structure_steps": len(new_steps)})
        if sliced is not None:
            ctx.metrics["density"] = float(sliced.density())
        ctx.clear_progress()


def _macs(model, shape) -> int:
    from pipeline.metrics.flops import count_macs

    return sum(lm.macs for lm in count_macs(model, tuple(shape)))
