"""imp (Double-Win, spec §4.1): iterative magnitude pruning with rewinding, and one-shot / random baselines.

method imp: round k trains with mask_k, whose sparsity is 1 - (1 - p)^k exactly (round((1-p)^k x N)
weights kept). With `prune_before_training` (the reference's undocumented behaviour) mask_1 prunes p
of the input's (pre-trained) magnitudes, i.e. round 1 is OMP at p; otherwise a dense round 0 trains
first and mask_1 comes from its weights. After round k: prune p of the remaining weights globally
(`criterion`, among mask_k's survivors) on the round's trained weights (`select`), rewind every
weight and BN statistic to the rewind point (the input = "pretrained", or `epoch_N` of the dense
round 0: late rewinding, which needs prune_before_training false), apply mask_{k+1}, and train again
with a fresh optimizer and schedule.
method omp: one mask at `target_sparsity` from the input's magnitudes, one training run.
method random: one global random mask at `target_sparsity` (seeded by the run seed), one training run.

Each round's ticket is kept as `round_KK.safetensors` + `round_KK.masks.safetensors` (weights: the
rewind point under mask_k, the ticket a downstream stage retrains, or the round's trained weights with
`ticket_weights: trained`), listed in stage.json `imp.rounds`. model.safetensors / masks.safetensors
hold round `select_round`; `pipeline.sparsity.tickets.load_round` reads any other round.

Resume: the state between rounds (`pipeline.sparsity.imp.ImpProgress`: round number, current mask,
records, rewind point) is the stage's progress, and the tickets are surviving artifacts of the stage;
each round's train() runs in `ctx.sub_context("round_KK")`, which gives it its own progress folder,
history (rows tagged with `round`) and record. stage.json `history_select` names the selected round,
so downstream summaries read that round's epochs only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from pipeline.engine import store
from pipeline.engine.errors import PipelineError
from pipeline.engine.seeding import Stream
from pipeline.engine.schema import Ratio
from pipeline.sparsity.ticket_config import CriterionConfig, Scope, rewind_epoch
from pipeline.engine.stage import Stage, StageConfig
from pipeline.train.config import OptimizerConfig, ScheduleConfig, TrainingConfig

if TYPE_CHECKING:
    from pipeline.sparsity.masks import MaskSet

# The implementation (torch) is imported where it runs: `validate` and `stages` import this module for its Config.

_IMP_ONLY = ("rounds", "prune_fraction", "prune_before_training")


class ImpCriterion(CriterionConfig):
    scope: Scope = Field(default="conv",
                         description="pruned weights: conv (the reference; fc never pruned), or conv and linear")

    @model_validator(mode="after")
    def _sparsity_is_per_round(self):
        for i, entry in enumerate(self.config_list or []):
            if "sparse_ratio" in entry:
                raise ValueError(f"config_list: entry {i} sets sparse_ratio, but imp sets it per round "
                                 "(1 - (1 - prune_fraction)^k, or target_sparsity); remove it")
        return self


# The Double-Win reference trains each round at lr 0.0005, batch 2048 (ImageNet, about 19k updates per
# round) with PGD-3 at step 16/765. Those values do not carry over to a smaller dataset, and the generic
# training defaults (lr 0.1, batch 128, PGD-10 at 2/255) are not the reference's either, so imp has no
# default for them: a config writes them (configs/cifar10_imp.yaml: lr 0.01 at batch 128, PGD-3 16/765).
IMP_REFERENCE = "the Double-Win reference uses lr 0.0005 at batch 2048 with PGD-3, eps 8/255, step 16/765"


class ImpOptimizer(OptimizerConfig):
    weight_decay: float = Field(default=1e-4, ge=0, description="the reference IMP's 1e-4 (also when only lr is written)")


class ImpConfig(StageConfig, TrainingConfig):
    # Per-round training: the reference's 30 epochs at a constant lr with wd 1e-4; lr and batch written.
    epochs: int = Field(default=30, gt=0, description="epochs of each training run (round)")
    optimizer: ImpOptimizer = Field(default_factory=ImpOptimizer,
                                    description="lr required (no default: " + IMP_REFERENCE + ")")
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig(kind="constant"))
    select: Literal["best", "final"] = Field(
        default="final", description="weights of a round that are pruned (and kept with ticket_weights: trained): "
                                     "the last epoch's, as the reference, or the best val RA epoch's")
    method: Literal["imp", "omp", "random"] = Field(
        default="imp", description="iterative magnitude pruning, one-shot magnitude, or random")
    rounds: int = Field(default=10, ge=1,
                        description="imp: tickets found (round k has sparsity 1 - (1 - prune_fraction)^k)")
    prune_fraction: Ratio = Field(default=0.2, gt=0, lt=1,
                                  description="imp: fraction of the remaining weights pruned per round")
    target_sparsity: Ratio | None = Field(default=None, gt=0, lt=1,
                                          description="omp / random: sparsity of the single ticket")
    prune_before_training: bool = Field(
        default=True, description="imp: round 1 prunes the input's magnitudes (OMP at p), as the reference; "
                                  "false: a dense round 0 trains first")
    rewind_to: str = Field(default="pretrained", pattern=r"^(pretrained|epoch_[1-9][0-9]*)$",
                           description="pretrained: the input's weights; epoch_N: after N epochs of the first run")
    ticket_weights: Literal["rewind", "trained"] = Field(
        default="rewind", description="weights saved with each ticket: the rewind point under its mask "
                                      "(retrained downstream), or the round's trained weights")
    select_round: int | Literal["last"] = Field(
        default="last", description="round whose ticket is model.safetensors / masks.safetensors")
    criterion: ImpCriterion = Field(default_factory=ImpCriterion,
                                    description="ranking of each pruning step; random: only its scope applies")

    @model_validator(mode="after")
    def _consistent(self):
        if self.method == "imp":
            if self.target_sparsity is not None:
                raise ValueError("target_sparsity: only for method omp / random; "
                                 "imp's sparsity follows rounds and prune_fraction")
        else:
            if self.target_sparsity is None:
                raise ValueError(f"target_sparsity: required for method {self.method}")
            for key in _IMP_ONLY:
                if key in self.model_fields_set:
                    raise ValueError(f"{key}: only used with method imp")
            if self.method == "random" and {"pruner", "config_list"} & self.criterion.model_fields_set:
                raise ValueError("criterion: method random draws its mask at random over criterion.scope; "
                                 "set only scope / dense_first / dense_last")
        last = self.rounds if self.method == "imp" else 1
        if self.select_round != "last" and not 1 <= self.select_round <= last:
            raise ValueError(f"select_round: must be between 1 and {last} (or 'last'), got {self.select_round}")
        if rewind_epoch(self.rewind_to) > self.epochs:
            raise ValueError(f"rewind_to: {self.rewind_to} is after the last epoch of a training run ({self.epochs})")
        if self.method == "imp" and rewind_epoch(self.rewind_to) > 0 and self.prune_before_training:
            # the snapshot would come from round 1, which already trains under mask_1: not the dense
            # network of late rewinding (Frankle et al.), and not a rewind point the reference has
            raise ValueError(f"rewind_to: {self.rewind_to} rewinds to the dense network after that many epochs, "
                             "which needs a dense first run: set prune_before_training: false (with true, round "
                             "1 already trains under mask_1)")
        return self

    @model_validator(mode="after")
    def _reference_values_written(self):
        missing = [] if "lr" in self.optimizer.model_fields_set else ["optimizer.lr"]
        if "batch_size" not in self.model_fields_set:
            missing.append("batch_size")
        if self.mode == "pgd":  # fast AT's step follows eps, clean training has no attack
            missing += [f"attack.{k}" for k in ("steps", "step") if k not in self.attack.model_fields_set]
        if missing:
            raise ValueError(f"{', '.join(missing)}: required for an imp stage ({IMP_REFERENCE}; "
                             "configs/cifar10_imp.yaml scales them to CIFAR-10)")
        return self


class Imp(Stage):
    Config = ImpConfig
    summary = "Double-Win IMP with rewinding (a ticket per round), one-shot magnitude (OMP) and random-pruning baselines"
    collective = True

    def run(self, ctx) -> None:
        from pipeline.sparsity.imp import ImpProgress
        from pipeline.sparsity.magnitude import imp_round_density
        from pipeline.sparsity.tickets import TicketHooks, round_files, round_metadata, ticket_masks
        from pipeline.train.loop import cpu_state, train

        cfg: ImpConfig = ctx.config
        data = ctx.data()
        model, in_masks, card = ctx.load_input_model()
        if in_masks is not None:
            raise PipelineError(f"imp: input stage {ctx.input.name!r} is already sparse; imp starts from a dense model")
        where = f"stages.{ctx.name}.criterion"
        last = cfg.rounds if cfg.method == "imp" else 1

        saved = ctx.load_progress()
        if saved is None:
            mask = self._first_mask(ctx, cfg, model, data, where)  # None: imp starts with a dense round 0
            name = "rewind_input.safetensors"  # the input = the "pretrained" rewind point
            state = ImpProgress(round=0 if mask is None else 1, mask=mask, rewind_file=name,
                                rewind_sha=store.save_tensors(ctx.progress_dir / name, cpu_state(model)),
                                rewind_fixed=rewind_epoch(cfg.rewind_to) == 0)
            ctx.save_progress(state.state_dict())
        else:
            state = ImpProgress.from_state_dict(saved, ctx.device)
        rewind = store.load_tensors(ctx.progress_dir / state.rewind_file, state.rewind_sha)

        while state.round <= last:
            k, mask = state.round, state.mask
            model.load_state_dict(rewind)
            hooks = TicketHooks(mask, snapshot_epoch=None if state.rewind_fixed else rewind_epoch(cfg.rewind_to))
            rctx = ctx.sub_context(f"round_{k:02d}", {"round": k})
            ctx.log(f"[{ctx.name}] round {k}: " + (f"sparsity {1 - mask.density():.4f}" if mask else "dense"))
            result = train(rctx, cfg, model, data, hooks=hooks)

            if not state.rewind_fixed:  # the first training run reached epoch N: that is the rewind point now
                rewind = hooks.snapshot
                state.rewind_file = f"rewind_{cfg.rewind_to}.safetensors"  # a new file: the saved state names the old
                state.rewind_sha = store.save_tensors(ctx.progress_dir / state.rewind_file, rewind)
                state.rewind_fixed = True
            trained = result.chosen_state(cfg.select)
            record = {"round": k, "epochs_run": len(result.history), "steps": result.steps,
                      "metrics": result.summary(), "flops": rctx.record["flops"]["training"], "files": None}
            if mask is not None:
                record.update(_ticket_numbers(cfg, mask, k))
                weights_file, masks_file = round_files(k)
                record["files"] = {
                    weights_file: ctx.save_surviving(weights_file, rewind if cfg.ticket_weights == "rewind" else trained,
                                                     masks=mask, metadata=round_metadata(card["arch"], ctx.name, k)),
                    masks_file: ctx.save_surviving(masks_file, mask.state_dict())}
            else:
                record.update({"density": 1.0, "sparsity": 0.0, "target_sparsity": 0.0})
            next_mask = None
            if k < last:
                model.load_state_dict(trained)
                next_mask = ticket_masks(model, cfg.criterion, imp_round_density(cfg.prune_fraction, k + 1),
                                         within=mask, where=where, batches=_batches(ctx, cfg, data))
            state.finish_round(record, next_mask)
            ctx.save_progress(state.state_dict())
            rctx.clear_progress()

        self._finish(ctx, cfg, state.rounds, model, card, data, last)

    @staticmethod
    def _first_mask(ctx, cfg: ImpConfig, model, data, where: str) -> MaskSet | None:
        """The mask of round 1 from the input's weights (None when imp trains a dense round 0 first)."""
        from pipeline.sparsity.magnitude import imp_round_density
        from pipeline.sparsity.tickets import check_criterion, ticket_masks

        if cfg.method == "random":
            return ticket_masks(model, cfg.criterion, 1 - cfg.target_sparsity, pruner="random", where=where,
                                generator=ctx.generator(Stream.IMP_RANDOM_MASK, device="cpu"))
        if cfg.method == "omp":
            return ticket_masks(model, cfg.criterion, 1 - cfg.target_sparsity, where=where,
                                batches=_batches(ctx, cfg, data))
        if cfg.prune_before_training:
            return ticket_masks(model, cfg.criterion, imp_round_density(cfg.prune_fraction, 1), where=where,
                                batches=_batches(ctx, cfg, data))
        check_criterion(model, cfg.criterion, imp_round_density(cfg.prune_fraction, 1), where=where)
        return None

    def _finish(self, ctx, cfg: ImpConfig, rounds: list[dict], model, card: dict, data, last: int) -> None:
        from pipeline.metrics.flops import FlopsRecord, InferenceFlops, TrainingFlops
        from pipeline.sparsity.masks import MaskSet
        from pipeline.sparsity.record import SparsityRecord
        from pipeline.sparsity.tickets import round_files

        chosen = last if cfg.select_round == "last" else cfg.select_round
        rec = next(r for r in rounds if r["round"] == chosen)
        weights_file, masks_file = round_files(chosen)
        model.load_state_dict(ctx.surviving_tensors(weights_file))
        masks = MaskSet(ctx.surviving_tensors(masks_file)).to(ctx.device)
        ctx.save_model(model, card, masks=masks)

        sparsity = SparsityRecord.of(masks)
        ctx.record["flops"] = FlopsRecord(
            inference=InferenceFlops.of(model, (data.in_chans, *data.input_size), masks.layer_densities(),
                                        at=f"round {chosen}'s masks"),
            training=TrainingFlops.total([TrainingFlops.from_json(r["flops"]) for r in rounds],
                                         note="sum over every training run of the stage (each round, and round 0 "
                                              "when dense)")).to_json()
        ctx.record["imp"] = {
            "method": cfg.method, "prune_fraction": cfg.prune_fraction if cfg.method == "imp" else None,
            "target_sparsity": cfg.target_sparsity, "prune_before_training": cfg.prune_before_training,
            "rewind_to": cfg.rewind_to, "ticket_weights": cfg.ticket_weights,
            "criterion": cfg.criterion.model_dump(mode="json") | ({"pruner": "random"} if cfg.method == "random" else {}),
            "selected_round": chosen, "rounds": rounds,
        }
        ctx.record["sparsity"] = sparsity.to_json()
        ctx.record["history_select"] = {"round": chosen}  # downstream summaries read the selected round's epochs
        ctx.metrics.update(rec["metrics"])
        ctx.metrics.update({"method": cfg.method, "selected_round": chosen, "rounds_trained": len(rounds),
                            "density": sparsity.density, "sparsity": sparsity.sparsity,
                            "steps": sum(r["steps"] for r in rounds)})


def _batches(ctx, cfg: ImpConfig, data) -> list | None:
    from pipeline.sparsity.tickets import criterion_batches

    return criterion_batches(cfg.criterion, data, batch_size=cfg.batch_size, seed=ctx.seed, device=ctx.device)


def _ticket_numbers(cfg: ImpConfig, mask: MaskSet, k: int) -> dict:
    from pipeline.sparsity.magnitude import imp_round_density
    from pipeline.sparsity.record import SparsityRecord

    s = SparsityRecord.of(mask)
    target = 1 - imp_round_density(cfg.prune_fraction, k) if cfg.method == "imp" else cfg.target_sparsity
    return {"density": s.density, "sparsity": s.sparsity, "target_sparsity": target,
            "kept": s.kept, "total": s.total, "layer_densities": s.layers}
