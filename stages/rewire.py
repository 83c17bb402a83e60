"""rewire: dynamic sparse training (Flying Bird, Flying Bird+, SET, RigL, MEST, GraNet) under PGD-AT or clean training.

Starts from scratch (the run's initial weights) or from `input`'s weights (e.g. a dense warmup). The
method preset fills the `sparsity:` block; the resolved config shows every value used. Layer densities
come from the allocator (exact global count), positions are random under the run seed (or the largest
|w| with `init_positions: magnitude`), and the topology changes during training as the method says.
A run killed mid-stage resumes bit-identically on CPU (the whole sparsity state is in the progress).

Files written besides model.safetensors / masks.safetensors (the selected epoch's weights and masks)
and model_final.safetensors or model_best.safetensors with its own .masks.safetensors (the other of
the two, zero outside its own epoch's masks; stage.json "checkpoints" says which is which, as for the
other training stages; see pipeline.train.checkpoints.save_trained):

- `updates.jsonl`: one JSON object per topology event, in order:
    event_index (1-based), event ("prune_grow" | "grow" | "prune_back" (MEST) | "gradual_prune" (GraNet)),
    step (0-based global step after which it ran), epoch (0-based), drop_fraction (null for MEST
    prune-back and GraNet pruning), dropped, grown, changed (mask entries flipped, all layers),
    density (global, over all masked weights), ever_active (fraction of masked weights ever active),
    layer_density {weight name: density}, layer_changed {weight name: entries flipped};
    Flying Bird+ adds prune_signal, grow_signal (null before enough epochs), adaptive (bool),
    extra_pruned, extra_grown; MEST grow adds prune_back_at; GraNet pruning adds target_density.
- `history.jsonl` rows (one per epoch) gain: density, sparsity_events (cumulative), connections_changed
  (this epoch), ever_active; Flying Bird+ also fbp_active, fbp_prune_signal, fbp_grow_signal.

stage.json: "sparsity" (method, target density; density, per-layer densities and counts of the saved
masks and their inference FLOPs ratio; the final masks' density, and their per-layer densities when the
best epoch was selected; events, prune-and-grow updates, connections changed, ever-active fraction)
and "flops" (from train(): inference at the final density, training integrated over the density
trajectory plus a dense weight gradient at each gradient-growth step).
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import Field, SerializeAsAny, ValidationInfo, field_validator, model_validator

from pipeline.engine.errors import ConfigError
from pipeline.engine.schema import Ratio
from pipeline.sparsity.dst import METHODS, Schedule, SparsityConfig, any_settings_model, validate_sparsity
from pipeline.engine.stage import Stage, StageConfig
from pipeline.train.config import TrainingConfig

# The implementation (torch) is imported in run(): `validate` and `stages` import this module for its Config.


class RewireConfig(StageConfig, TrainingConfig):
    method: str = Field(default="flying_bird", description=f"one of: {', '.join(METHODS)}")
    density: Ratio = Field(default=0.2, gt=0, le=1, description="kept fraction of all conv/linear weights (exact)")
    # Holds the method's own Settings (the common knobs plus its sub-block), filled from its preset; the
    # annotation names every method's keys so that config errors can suggest them.
    sparsity: SerializeAsAny[any_settings_model()] = Field(
        default=None, validate_default=True, description="per-method settings; every key defaults to the method preset")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; valid: {', '.join(METHODS)}")
        return value

    @field_validator("sparsity", mode="plain")
    @classmethod
    def _preset_underneath(cls, value: Any, info: ValidationInfo) -> SparsityConfig | None:
        method = info.data.get("method")
        if method is None:  # the invalid method is the error; its settings cannot be judged
            return None
        if isinstance(value, METHODS.spec(method).Settings):
            return value
        return validate_sparsity(method, value, epochs=info.data.get("epochs"))

    @model_validator(mode="after")
    def _fbp_signals_every_epoch(self):
        # The reference reads FB+'s signals every epoch on the full val split; with every > 1 its "last 4
        # differences" would span 4 * every epochs, with val_limit they would come from a subset. Refusing is
        # simpler and more honest than a second, signal-only evaluation schedule.
        if self.method == "flying_bird_plus":
            bad = ([f"eval.every: {self.eval.every}"] if self.eval.every != 1 else []) + \
                  ([f"eval.val_limit: {self.eval.val_limit}"] if self.eval.val_limit is not None else [])
            if bad:
                raise ValueError(f"method: 'flying_bird_plus' reads its signals every epoch on the full validation "
                                 f"split (as the reference), which contradicts {' and '.join(bad)}; set eval.every: 1 "
                                 "and drop eval.val_limit (or shrink data.val_size)")
        return self

    @model_validator(mode="after")
    def _method_checks(self):
        if self.sparsity is not None and self.method in METHODS:
            try:
                METHODS.spec(self.method).check(self.sparsity, self.density)
            except ValueError as exc:
                raise ValueError(f"sparsity: {exc}") from None
        return self


class Rewire(Stage):
    Config = RewireConfig
    input_mode = "optional"
    summary = "dynamic sparse training: " + " | ".join(METHODS)
    collective = True

    def run(self, ctx) -> None:
        from pipeline.data.batches import num_batches
        from pipeline.metrics.flops import count_macs, inference_flops
        from pipeline.sparsity.dst import RewireHooks, build_method
        from pipeline.sparsity.record import SparsityRecord
        from pipeline.train.checkpoints import save_trained
        from pipeline.train.loop import train

        cfg: RewireConfig = ctx.config
        data = ctx.data()
        model, _, card = ctx.input_or_new_model(data)  # an input's own masks, if any, are replaced

        steps_per_epoch = num_batches(len(data.train_y), cfg.batch_size, cfg.drop_last)
        if cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        schedule = Schedule.from_settings(cfg.sparsity, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs)
        method = build_method(cfg.method, cfg.sparsity, cfg.density, schedule, seed=ctx.seed)
        try:
            state = method.start(model)
        except ValueError as exc:  # e.g. dense first/last layers alone exceed the density
            raise ConfigError(f"stages.{ctx.name}.density / sparsity: {exc}") from None
        masks = state.masks
        hooks = RewireHooks(method, state, select_key=cfg.select_key)
        ctx.log(f"[{ctx.name}] {cfg.method}: initial density {masks.density():.4f} ({cfg.sparsity.init}), "
                f"{len(schedule.update_steps())} scheduled updates over {schedule.total_steps} steps")

        result = train(ctx, cfg, model, data, hooks=hooks)

        best = save_trained(ctx, model, card, result, cfg.select, masks=state.masks,
                            best_masks=state.best_masks) == "best"
        chosen = state.best_masks if best else state.masks
        ctx.write_bytes("updates.jsonl", "".join(json.dumps(e) + "\n" for e in state.log).encode())

        prune_grow = sum(1 for e in state.log if e["event"] == "prune_grow")
        layer_macs = count_macs(model, (data.in_chans, *data.input_size))
        ctx.record["sparsity"] = SparsityRecord.of(
            chosen, method=cfg.method, target_density=cfg.density, selected="best" if best else "final",
            final_density=state.masks.density(), final_layers=state.masks.layer_densities() if best else None,
            counts=chosen.counts(), flops_ratio=inference_flops(layer_macs, chosen.layer_densities())["ratio"],
            events=state.events, prune_grow_updates=prune_grow, connections_changed=state.changed_total,
            ever_active=state.ever_active_fraction(), dense_layers=sorted(state.frozen), updates_file="updates.jsonl",
        ).to_json()
        ctx.metrics.update(result.metrics(cfg.select))
        ctx.metrics.update({"density": chosen.density(), "ever_active": state.ever_active_fraction(),
                            "sparsity_events": state.events})
