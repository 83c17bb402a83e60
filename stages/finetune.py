"""finetune: (adversarial) training of the input model; masked weights stay exactly zero.

With a `transfer:` block the input ticket moves to another dataset first (Double-Win, spec §4.2): a new
dense classifier for B's classes, B's normalisation statistics inside the model, the backbone mask kept.
`mode: clean` is the standard fine-tuning regime, `mode: pgd` the adversarial one. After an early_bird
stage it is Robust Bird's stage 2, and its default lr milestones are RB's [50, 150].
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.engine.seeding import Stream, derive_seed
from pipeline.engine.errors import DataError
from pipeline.engine.stage import Stage, StageConfig
from pipeline.train.config import TrainingConfig
from pipeline.models.transfer_config import TransferConfig

# The implementation (torch) is imported in run(): `validate` and `stages` import this module for its Config.


class FinetuneConfig(StageConfig, TrainingConfig):
    select: Literal["best", "final"] = Field(default="best", description="weights kept: best val RA epoch, or the last")
    ticket_round: int | None = Field(
        default=None, ge=1, description="input is an imp stage: fine-tune the ticket of this round instead of the "
                                        "round that stage selected")
    transfer: TransferConfig | None = Field(
        default=None, description="move the input model to another dataset first: new dense head, kept mask")


# Robust Bird's stage 2 (train_eb.py) decays the lr at epochs 50 and 150; main_adv's [100, 150] is the
# training default (spec §1.1), so a finetune after early_bird takes RB's unless milestones are written.
RB_STAGE2_MILESTONES = (50, 150)


class Finetune(Stage):
    Config = FinetuneConfig
    summary = "PGD-AT / fast / clean fine-tuning of the input model, keeping its sparsity mask; optional transfer"
    collective = True

    @classmethod
    def follow_input(cls, config: FinetuneConfig, input_type: str) -> None:
        sched = config.schedule
        if input_type == "early_bird" and sched.kind == "multistep" and "milestones" not in sched.model_fields_set:
            object.__setattr__(sched, "milestones", list(RB_STAGE2_MILESTONES))

    def run(self, ctx) -> None:
        from pipeline.models.transfer import (MODEL_DATA_KEY, check_compatible, dataset_label, retarget_model,
                                              transfer_masks, transfer_record)
        from pipeline.sparsity.hooks import MaskHooks
        from pipeline.train.checkpoints import save_trained
        from pipeline.train.loop import train

        cfg: FinetuneConfig = ctx.config
        holder = ctx.input.model_holder().name
        source = holder if cfg.ticket_round is None else f"{holder} round {cfg.ticket_round}"
        if cfg.ticket_round is not None:
            from pipeline.sparsity.tickets import load_round  # imp's per-round ticket files

            model, masks, card = load_round(ctx.input.model_holder(), cfg.ticket_round, ctx.device)
        else:
            model, masks, card = ctx.load_input_model()
        if cfg.transfer is not None:
            tcfg = cfg.transfer
            data = ctx.data(tcfg.data)
            check_compatible(card, data, source)
            source_card, source_masks = card, masks
            card = retarget_model(model, card, data, head=tcfg.head, seed=derive_seed(ctx.seed, Stream.TRANSFER_HEAD))
            masks, dropped = transfer_masks(masks, model, keep=tcfg.keep_mask, new_head=tcfg.head == "new")
            ctx.record["transfer"] = transfer_record(
                source_card=source_card, source_stage=holder, source_round=cfg.ticket_round, card=card, data=data,
                cfg=tcfg, source_masks=source_masks, masks=masks, dropped=dropped, head_layer=model.classifier_name)
            ctx.record[MODEL_DATA_KEY] = tcfg.data.model_dump(mode="json")
            ctx.log(f"[{ctx.name}] transfer {source_card.get('dataset')} -> {dataset_label(data.name, data.source)}: "
                    f"{len(data.train_y)} training images, {data.num_classes} classes; "
                    f"{ctx.record['transfer']['masks']['note']}")
        else:
            data = ctx.data()  # a transferred model keeps training on its own dataset
            if int(card["num_classes"]) != data.num_classes:
                raise DataError(f"the model of stage {source!r} has {card['num_classes']} classes but "
                                f"{dataset_label(data.name, data.source)} has {data.num_classes}; "
                                "add a `transfer:` block to fine-tune it on another dataset")
        hooks = MaskHooks(masks) if masks is not None else None  # masked weights and momentum stay exactly 0

        result = train(ctx, cfg, model, data, hooks=hooks)

        save_trained(ctx, model, card, result, cfg.select, masks=masks)
        # the same key the training loop picked its best epoch by, so the metrics describe the kept weights
        ctx.metrics.update(result.metrics(cfg.select))
        if masks is not None:
            ctx.metrics["density"] = float(masks.density())
