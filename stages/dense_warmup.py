"""dense_warmup: train a dense model from scratch (or from an input stage): clean, fast AT or PGD AT."""
from __future__ import annotations

from pipeline.engine.stage import Stage, StageConfig
from pipeline.train.config import TrainingConfig

# The implementation (torch) is imported in run(): `validate` and `stages` import this module for its Config.


class DenseWarmupConfig(StageConfig, TrainingConfig):
    pass


class DenseWarmup(Stage):
    Config = DenseWarmupConfig
    input_mode = "optional"
    summary = "dense training (clean | fast | pgd) from scratch, or from `input`'s weights"
    collective = True

    def run(self, ctx) -> None:
        from pipeline.train.checkpoints import save_trained
        from pipeline.train.loop import train

        cfg: DenseWarmupConfig = ctx.config
        data = ctx.data()
        model, _, card = ctx.input_or_new_model(data)  # an input's masks are dropped: this trains densely

        result = train(ctx, cfg, model, data)

        save_trained(ctx, model, card, result, cfg.select)
        ctx.metrics.update(result.metrics(cfg.select))
