"""early_bird (Robust Bird, spec §2): cheap dense training until the magnitude mask settles, then prune.

After every epoch a global magnitude mask at `density` is drawn over the detection scope (conv weights,
as the reference); training stops once the newest mask is within `threshold` (normalised Hamming
distance) of each of the `window` - 1 masks before it. The ticket is then cut with `criterion` (global
|w| over conv + linear by default) from that epoch's weights, which pass on unchanged (no rewinding,
as the reference) unless `rewind_to` names the starting weights or an earlier epoch. The next stage
(finetune, PGD-AT) trains the sparse model; this stage's training FLOPs are the dense search.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.engine.errors import PipelineError, StageFailed
from pipeline.engine.seeding import Stream
from pipeline.engine.schema import Ratio
from pipeline.sparsity.ticket_config import CriterionConfig, Scope, rewind_epoch
from pipeline.engine.stage import Stage, StageConfig
from pipeline.train.config import ScheduleConfig, TrainingConfig

# The implementation (torch) is imported in run(): `validate` and `stages` import this module for its Config.


FAST_PEAK_LR, FAST_PEAK_FRACTION = 0.2, 0.4  # spec §2.1, `--stage1 fast`


class PruneCriterion(CriterionConfig):
    scope: Scope = Field(default="conv_linear", description="pruned weights: conv and linear (the reference), or conv")


class EarlyBirdConfig(StageConfig, TrainingConfig):
    mode: Literal["clean", "fast", "pgd"] = Field(default="clean", description="search training: clean (the paper's cheapest), fast AT or PGD AT")
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig(milestones=[50, 150]))
    select: Literal["final"] = Field(default="final", description="the weights of the emergence epoch pass on")
    density: Ratio = Field(default=0.2, gt=0, le=1, description="kept fraction of the ticket (and of the detection masks)")
    window: int = Field(default=5, ge=2, description="masks compared: the newest against the window - 1 before it")
    threshold: Ratio = Field(default=0.08, ge=0, le=1, description="the ticket emerges when every distance in the window is <= this")
    detect_scope: Scope = Field(default="conv", description="weights of the per-epoch detection masks")
    detect_rule: Literal["topk", "threshold"] = Field(
        default="topk", description="detection masks: exact top-k of round(density x N), or the reference's |w| > "
        "the value at index floor(N x (1 - density)) of the sorted magnitudes (ceil(density x N) - 1 kept, ties dropped)")
    criterion: PruneCriterion = Field(default_factory=PruneCriterion, description="how the ticket is cut")
    rewind_to: str | None = Field(default=None, pattern=r"^(init|epoch_[1-9][0-9]*)$",
                                  description="null: the emergence epoch's weights; init: the starting weights; epoch_N: after N epochs")
    on_no_emergence: Literal["use_last", "fail"] = Field(default="use_last", description="masks never settled: warn and use the last epoch, or fail")

    @model_validator(mode="after")
    def _fast_at_cyclic_lr(self):
        # spec §2.1: RB stage 1 with fast AT follows Wong et al.'s cyclic lr 0 -> 0.2 -> 0 peaking at 2/5
        # of the run; the multistep default belongs to clean/PGD search. A written schedule (or lr) is kept.
        if self.mode == "fast" and "schedule" not in self.model_fields_set:
            object.__setattr__(self, "schedule", ScheduleConfig(kind="cyclic", peak_fraction=FAST_PEAK_FRACTION))
            if "optimizer" not in self.model_fields_set or "lr" not in self.optimizer.model_fields_set:
                object.__setattr__(self, "optimizer", self.optimizer.model_copy(update={"lr": FAST_PEAK_LR}))
        return self

    @model_validator(mode="after")
    def _rewind_within_training(self):
        n = rewind_epoch(self.rewind_to)
        if n is not None and n > self.epochs:
            raise ValueError(f"rewind_to: {self.rewind_to} is after the last epoch ({self.epochs})")
        return self


class EarlyBird(Stage):
    Config = EarlyBirdConfig
    input_mode = "optional"
    summary = "Robust Bird: train until the magnitude mask settles (early bird), then prune; from scratch or `input`"
    collective = True

    def run(self, ctx) -> None:
        from pipeline.metrics.flops import FlopsRecord, InferenceFlops
        from pipeline.sparsity.early_bird import EarlyBirdHooks
        from pipeline.sparsity.record import SparsityRecord
        from pipeline.sparsity.tickets import check_criterion, criterion_batches, ticket_masks
        from pipeline.train.loop import train

        cfg: EarlyBirdConfig = ctx.config
        data = ctx.data()
        model, masks, card = ctx.input_or_new_model(data)
        if masks is not None:
            raise PipelineError(f"early_bird: input stage {ctx.input.name!r} is already sparse; "
                                "the early-bird search trains a dense model")

        check_criterion(model, cfg.criterion, cfg.density, where=f"stages.{ctx.name}.criterion")
        hooks = EarlyBirdHooks(cfg)
        result = train(ctx, cfg, model, data, hooks=hooks)

        detector = hooks.detector
        emerged = detector.fired_at is not None
        epochs_run = len(result.history)
        epoch = detector.curve[detector.fired_at]["epoch"] if emerged else None
        if not emerged:
            closest = min((max(c["window"]) for c in detector.curve if c["window"]), default=None)
            detail = (f"the smallest window distance was {closest:.4f} > threshold {cfg.threshold}" if closest is not None
                      else f"the window of {cfg.window} masks never filled")
            if cfg.on_no_emergence == "fail":
                raise StageFailed(f"early_bird: no early-bird ticket in {epochs_run} epochs ({detail}); raise `threshold` "
                                  "or `epochs`, or set on_no_emergence: use_last")
            ctx.console.always(f"warning: [{ctx.name}] no early-bird ticket in {epochs_run} epochs ({detail}); "
                               f"pruning the last epoch's weights (on_no_emergence: use_last)")

        model.load_state_dict(result.final_state)
        batches = criterion_batches(cfg.criterion, data, batch_size=cfg.batch_size, seed=ctx.seed, device=ctx.device)
        masks = ticket_masks(model, cfg.criterion, cfg.density, generator=ctx.generator(Stream.EARLY_BIRD_RANDOM, device="cpu"),
                             batches=batches, where=f"stages.{ctx.name}.criterion")
        if hooks.snapshot_epoch is not None:
            if hooks.snapshot is None:
                raise StageFailed(f"early_bird: rewind_to {cfg.rewind_to} was never reached: the ticket emerged "
                                  f"at epoch {epoch}; rewind to an epoch <= {epoch}")
            model.load_state_dict(hooks.snapshot)
        ctx.save_model(model, card, masks=masks)

        sparsity = SparsityRecord.of(masks)
        weights_from = f"epoch {epochs_run}" if cfg.rewind_to is None else cfg.rewind_to
        ctx.record["early_bird"] = {
            "emerged": emerged, "epoch": epoch, "epochs_run": epochs_run, "weights_from": weights_from,
            "density": cfg.density, "window": cfg.window, "threshold": cfg.threshold,
            "detect_scope": cfg.detect_scope, "criterion": cfg.criterion.model_dump(mode="json"),
            "curve": detector.curve, "final_density": sparsity.density, "layer_densities": sparsity.layers,
        }
        ctx.record["sparsity"] = sparsity.to_json()
        flops = FlopsRecord.from_json(ctx.record["flops"])  # set by train(): the dense search
        flops.inference = InferenceFlops.of(model, (data.in_chans, *data.input_size), masks.layer_densities(),
                                            at="the ticket's masks")
        flops.training.note = "dense early-bird search; the sparse training is counted by the next stage"
        ctx.record["flops"] = flops.to_json()
        ctx.metrics.update(result.metrics())
        ctx.metrics.update({"emerged": emerged, "emergence_epoch": epoch, "density": sparsity.density,
                            "sparsity": sparsity.sparsity})
