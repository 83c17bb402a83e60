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

from pydantic import Field, field_validator, model_validator

from pipeline.data import num_batches
from pipeline.engine.errors import ConfigError
from pipeline.metrics.flops import count_macs, inference_flops
from pipeline.engine.schema import Ratio
from pipeline.sparsity.dst import (METHODS, DSTState, RewireHooks, Schedule, SparsityConfig, build_method,
                                   fill_from_preset)
from pipeline.engine.stage import Stage, StageConfig
from pipeline.sparsity.record import SparsityRecord
from pipeline.train.checkpoints import save_trained
from pipeline.train.loop import TrainingConfig, train


class RewireConfig(StageConfig, TrainingConfig):
    method: str = Field(default="flying_bird", description=f"one of: {', '.join(METHODS)}")
    density: Ratio = Field(default=0.2, gt=0, le=1, description="kept fraction of all conv/linear weights (exact)")
    sparsity: SparsityConfig = Field(default=None, validate_default=True,  # filled from the preset before validation
                                     description="per-method settings; every key defaults to the method preset")

    @model_validator(mode="before")
    @classmethod
    def _preset_underneath(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            data["sparsity"] = fill_from_preset(data.get("method", "flying_bird"), data.get("sparsity"),
                                                epochs=data.get("epochs", 200))
        return data

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; valid: {', '.join(METHODS)}")
        return value

    @model_validator(mode="after")
    def _cross_checks(self):
        g = self.sparsity.gradual if self.sparsity is not None else None
        if g is not None and g.initial_density < self.density:
            raise ValueError(f"sparsity: gradual.initial_density {g.initial_density} is below density {self.density}")
        return self


class Rewire(Stage):
    Config = RewireConfig
    input_mode = "optional"
    summary = "dynamic sparse training: flying_bird | flying_bird_plus | set | rigl | mest | granet"

    def run(self, ctx) -> None:
        cfg: RewireConfig = ctx.config
        data = ctx.data()
        model, _, card = ctx.input_or_new_model(data)  # an input's own masks, if any, are replaced

        steps_per_epoch = num_batches(len(data.train_y), cfg.batch_size, cfg.drop_last)
        if cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        schedule = Schedule.from_settings(cfg.sparsity, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs)
        method = build_method(cfg.method, cfg.sparsity, cfg.density, schedule, seed=ctx.seed)
        try:
            masks = method.initial_masks(model)
        except ValueError as exc:  # e.g. dense first/last layers alone exceed the density
            raise ConfigError(f"stages.{ctx.name}.density / sparsity: {exc}") from None
        state = DSTState.start(masks)
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
            final_density=state.masks.density(), final_layers=state.layer_densities() if best else None,
            counts=chosen.counts(), flops_ratio=inference_flops(layer_macs, chosen.layer_densities())["ratio"],
            events=state.events, prune_grow_updates=prune_grow, connections_changed=state.changed_total,
            ever_active=state.ever_active_fraction(), dense_layers=sorted(method.frozen), updates_file="updates.jsonl",
        ).to_json()
        ctx.metrics.update(result.metrics(cfg.select))
        ctx.metrics.update({"density": chosen.density(), "ever_active": state.ever_active_fraction(),
                            "sparsity_events": state.events})
