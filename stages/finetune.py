"""finetune: (adversarial) training of the input model; masked weights stay exactly zero."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.evaluation import summarize_history
from pipeline.stage import Stage, StageConfig
from pipeline.training import TrainingConfig, TrainingHooks, train


class FinetuneConfig(StageConfig, TrainingConfig):
    select: Literal["best", "final"] = Field(default="best", description="weights kept: best val RA epoch, or the last")


class KeepMasks(TrainingHooks):
    """Re-zero masked weights and their optimizer state after every step (gradients there are dense)."""

    def __init__(self, masks):
        self.masks = masks

    def on_start(self, model, optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.masks.apply_(model)

    def after_step(self, step: int) -> None:
        self.masks.apply_(self.model)
        self.masks.zero_optimizer_state_(self.optimizer, self.model)


class Finetune(Stage):
    Config = FinetuneConfig
    summary = "PGD-AT / fast / clean fine-tuning of the input model, keeping its sparsity mask"

    def run(self, ctx) -> None:
        cfg: FinetuneConfig = ctx.config
        data = ctx.data()
        model, masks, card = ctx.load_input_model()
        hooks = KeepMasks(masks) if masks is not None else None

        result = train(ctx, cfg, model, data, hooks=hooks)

        model.load_state_dict(result.chosen_state(cfg.select))
        ctx.save_model(model, card, masks=masks)
        ctx.metrics.update(summarize_history(result.history))
        ctx.metrics.update({"selected": cfg.select, "epochs_run": len(result.history), "steps": result.steps})
        if masks is not None:
            ctx.metrics["density"] = float(masks.density())
