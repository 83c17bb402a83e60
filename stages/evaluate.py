"""evaluate: SA, RA under several attacks, robust gap and overfitting at the best and final checkpoints,
and corruption robustness, of the input model.

Definitions (spec §1.1):
- RA: accuracy on adversarial examples of the evaluation attack, model in eval mode.
- Robust generalization gap (canonical): RA on the fixed, non-augmented train split minus test RA.
  Running-train variant (the Robust Bird script's): the training history's running adversarial train
  accuracy of the checkpoint's epoch minus test RA.
- With `rb_script_metrics`, also the Robust Bird script's test-selected definitions (metrics.rb_script:
  RA_best / SA_best = the max over epochs of test RA / SA, gap_best = max running train acc - RA_best).
- Robust overfitting: test RA at the best-val-RA epoch minus test RA at the last epoch, from the
  training history (`robust_overfitting`); and measured here with this stage's first attack on the two
  kept checkpoints (`robust_overfitting_measured`) when the training stage kept both.

Security curve (`security_curve:`): RA against eps under PGD-k (and optionally AutoAttack), rules in
pipeline/metrics/curve_config.py.

The checkpoint the input stage selected (model.safetensors) gets every attack, the corruptions and the curve;
the other of best/final, when kept, gets SA and the first attack (enough for gap and overfitting).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.corruptions.config import CorruptionConfig
from pipeline.corruptions.published import load_published
from pipeline.engine.errors import PipelineError
from pipeline.engine.stage import Stage, StageConfig
from pipeline.metrics.attack_config import EvalAttack, PGDEvalConfig
from pipeline.metrics.autoattack_config import INSTALL_HINT, AutoAttackConfig, find_autoattack, missing_message
from pipeline.metrics.curve_config import SecurityCurveConfig

if TYPE_CHECKING:
    from pipeline.metrics.evaluation import EvaluationMetrics

# The implementation (torch) is imported where it runs: `validate` and `stages` import this module for its Config.


CURVE_AA = "security_curve.autoattack"  # the key of the curve's AutoAttack among the skipped attacks


class EvaluateConfig(StageConfig):
    attacks: list[EvalAttack] | None = Field(
        default=None, description="evaluation attacks, each reported with its parameters in metrics['ra']: "
        "{kind: pgd|fgsm_rs, eps, step, steps, restarts, random_start, splits, name} or {kind: autoattack, version, "
        "norm, eps, n, splits, backend, on_missing, batch_size}; default one PGD-20 (8/255, step 2/255, random "
        "start). The first gives the flat test_ra / robust_gap keys")
    attack: PGDEvalConfig | None = Field(default=None, description="a single PGD attack (same as `attacks: [attack]`)")
    batch_size: int = Field(default=256, gt=0)
    train_limit: int | None = Field(default=None, gt=0, description="first N images of the non-augmented train split for the gap")
    val_limit: int | None = Field(default=None, gt=0)
    test_limit: int | None = Field(default=None, gt=0)
    checkpoints: Literal["both", "selected"] = Field(
        default="both", description="both: also evaluate the other of best/final when the input stage kept it")
    rb_script_metrics: bool = Field(
        default=False, description="also report Robust Bird's train_eb.py definitions from the training history "
        "(metrics.rb_script: max test RA / SA, gap_best = max running train acc - max test RA); the headline "
        "figures stay val-selected with the canonical gap")
    corruptions: CorruptionConfig | None = Field(
        default=None, description="corruption robustness, off when unset: {path (published CIFAR-10-C layout), "
        "generate, types, severities, limit, seed, backend: builtin|imagecorruptions, batch_size}")
    security_curve: SecurityCurveConfig | None = Field(
        default=None, description="RA against eps, off when unset: {eps: [0, 1/255, ..., 16/255], steps, "
        "step_factor (step = step_factor * eps / steps), restarts, random_start, split, limit, autoattack: "
        "{version, n, backend, on_missing, batch_size}}")

    @field_validator("attacks", mode="before")
    @classmethod
    def _default_kind(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"kind": "pgd", **v} if isinstance(v, dict) and "kind" not in v else v for v in value]
        return value

    @model_validator(mode="after")
    def _resolve_attacks(self):
        if self.attack is not None:
            if "attacks" in self.model_fields_set and self.attacks is not None:
                raise ValueError("give `attacks` (a list) or `attack` (one PGD attack), not both")
            object.__setattr__(self, "attacks", [self.attack])
            object.__setattr__(self, "attack", None)
        elif self.attacks is None:
            object.__setattr__(self, "attacks", [PGDEvalConfig()])
        if not self.attacks:
            raise ValueError("attacks: give at least one attack")
        labels = [a.label() for a in self.attacks]
        dup = sorted({lab for lab in labels if labels.count(lab) > 1})
        if dup:
            raise ValueError(f"attacks: several attacks are labelled {', '.join(dup)}; give them distinct `name`s")
        return self


class Evaluate(Stage):
    Config = EvaluateConfig
    summary = "SA / RA (PGD via advertorch, AutoAttack), robust gap and overfitting at best and final, corruptions"
    collective = True

    def run(self, ctx) -> None:
        from pipeline.metrics.evaluation import checkpoint_figures, checkpoint_gaps, rb_script_summary
        from pipeline.metrics.flops import FlopsRecord
        from pipeline.train.checkpoints import CheckpointsRecord, kept_checkpoints

        cfg: EvaluateConfig = ctx.config
        data = ctx.data()
        skipped = self._preflight(cfg, ctx)
        holder = ctx.input.model_holder()
        history = holder.history()
        flops = holder.section(FlopsRecord)
        # a clean-trained model's running train accuracy is on clean batches: no running-train gap to read
        clean = flops is not None and flops.training is not None and flops.training.mode == "clean"
        checkpoints = kept_checkpoints(holder)[:1 if cfg.checkpoints == "selected" else None]
        first = cfg.attacks[0]
        limits = {s: getattr(cfg, f"{s}_limit") for s in ("train", "val", "test")}

        selected = checkpoints[0]
        model, masks, _ = ctx.input.load_model(ctx.device, weights=selected.file)
        primary = self._judge(ctx, cfg, model, data, cfg.attacks, skipped, limits, selected)
        primary.update(checkpoint_gaps(primary, first.label(), [] if clean else history, selected.epoch))
        results = {selected.which: checkpoint_figures(primary, selected.file, selected.epoch)}
        for ck in checkpoints[1:]:  # the other of best/final: SA and the first attack, for gap and overfitting
            other, _, _ = ctx.input.load_model(ctx.device, weights=ck.file)
            res = self._judge(ctx, cfg, other, data, cfg.attacks[:1], {}, limits, ck)
            res.update(checkpoint_gaps(res, first.label(), [] if clean else history, ck.epoch))
            results[ck.which] = checkpoint_figures(res, ck.file, ck.epoch)
        kept = holder.section(CheckpointsRecord)
        if kept is not None and kept.same_weights and len(results) == 1 and selected.which in ("best", "final"):
            # best epoch = last epoch: one set of weights is both checkpoints
            twin = "final" if selected.which == "best" else "best"
            results[twin] = {**results[selected.which], "same_as": selected.which}

        m = self._metrics(primary, first, selected.which, results, history)
        m.density = float(masks.density()) if masks is not None else None
        if cfg.rb_script_metrics:
            m.rb_script = rb_script_summary(history)
        if cfg.corruptions is not None:
            m.corruption = self._corruptions(ctx, cfg, model, data, selected.which)
        if cfg.security_curve is not None:
            from pipeline.metrics.security_curve import security_curve

            curve = cfg.security_curve
            m.security_curve = security_curve(
                model, data, curve, limit=limits[curve.split], batch_size=cfg.batch_size, device=ctx.device,
                seed=ctx.seed, autoattack_skipped=skipped.get(CURVE_AA),
                log=lambda msg: ctx.log(f"[{ctx.name}] {msg}"))
        ctx.metrics.update(m.to_json())
        ctx.write_json("metrics.json", m.to_json())
        ctx.pass_model_through()

    @staticmethod
    def _judge(ctx, cfg: EvaluateConfig, model, data, attacks, skipped, limits, ck) -> dict:
        from pipeline.metrics.evaluation import evaluate_attacks

        ctx.log(f"[{ctx.name}] checkpoint {ck.which} ({ck.file}, epoch {ck.epoch})")
        return evaluate_attacks(model, data, attacks, limits=limits, batch_size=cfg.batch_size, device=ctx.device,
                                seed=ctx.seed, skipped=skipped, log=lambda msg: ctx.log(f"[{ctx.name}] {msg}"))

    @staticmethod
    def _metrics(res: dict, first, which: str, results: dict, history: list[dict]) -> EvaluationMetrics:
        from pipeline.metrics.evaluation import EvaluationMetrics, SplitScores, summarize_selected

        entry = res["ra"].get(first.label(), {})
        splits = {s: SplitScores(n=res["n"][s], sa=res["sa"][s], loss=res["clean_loss"][s], ra=entry.get(s),
                                 robust_loss=(entry.get("robust_loss") or {}).get(s)) for s in res["sa"]}
        summary = summarize_selected(history)
        m = EvaluationMetrics(checkpoint=which, splits=splits, attack=first.model_dump(mode="json"), ra=res["ra"],
                              checkpoints=results, robust_gap=res.get("robust_gap"),
                              robust_gap_running_train=res.get("robust_gap_running_train"), history=summary,
                              robust_overfitting=summary.get("RA_diff"))
        if {"best", "final"} <= results.keys():
            best_ra = results["best"]["ra"].get(first.label(), {}).get("test")
            final_ra = results["final"]["ra"].get(first.label(), {}).get("test")
            if best_ra is not None and final_ra is not None:
                m.robust_overfitting_measured = best_ra - final_ra
        m.robust_gap_best = (results.get("best") or {}).get("robust_gap")
        m.robust_gap_final = (results.get("final") or {}).get("robust_gap")
        return m

    @staticmethod
    def _corruptions(ctx, cfg: EvaluateConfig, model, data, which: str) -> dict:
        from pipeline.corruptions.benchmark import evaluate_corruptions, generation_parameters

        corr = evaluate_corruptions(model, data.test_x, data.test_y, cfg.corruptions, device=ctx.device,
                                    batch_size=cfg.batch_size, num_classes=data.num_classes,
                                    log=lambda msg: ctx.log(f"[{ctx.name}] {msg}"))
        corr["checkpoint"] = which
        full = dict(corr)
        if corr["source"] == "generated" and corr["backend"] == "builtin":
            full["parameters"] = generation_parameters(corr["types"])
        ctx.write_json("corruption.json", full)
        means = {k: "n/a" if corr[k] is None else f"{corr[k]:.2f}" for k in ("mean_acc_15", "mean_acc_19")}
        ctx.log(f"[{ctx.name}] corruptions ({corr['source']}): mean of the {len(corr['types'])} types evaluated "
                f"{corr['mean_acc']:.2f}  15 standard {means['mean_acc_15']}  all 19 {means['mean_acc_19']}  "
                f"clean {corr['clean_acc']:.2f}")
        return corr

    @staticmethod
    def _preflight(cfg: EvaluateConfig, ctx) -> dict[str, str]:
        """Fail before any work when a required AutoAttack or a published corruption set is missing or
        malformed; note the attacks to skip."""
        skipped = {}
        c = cfg.corruptions
        if c is not None and c.path is not None and c.path.is_dir():
            load_published(c.path, c.types)  # reads the layout (labels.npy, one .npy per type) or raises
        curve = cfg.security_curve
        wanted = [(a.label(), a) for a in cfg.attacks if isinstance(a, AutoAttackConfig)]
        if curve is not None and curve.autoattack is not None:
            wanted.append((CURVE_AA, curve.autoattack))
        for label, a in wanted:
            if find_autoattack(a.backend) is None:
                if a.on_missing == "error":
                    raise PipelineError((f"{CURVE_AA}: " if label == CURVE_AA else "") + missing_message(a))
                skipped[label] = f"not installed; install with: {INSTALL_HINT}"
                ctx.log(f"[{ctx.name}] skipping {label}: not installed")
        return skipped
