"""evaluate: SA, RA under PGD (advertorch), robust generalization gap and robust overfitting of the input model.

Definitions (spec §1.1): RA = accuracy on PGD adversarial examples, eval mode. Robust gap (canonical) =
RA on the fixed, non-augmented train split minus test RA; the running-train-batch variant (the papers'
Robust Bird script) = last epoch's running adversarial train accuracy minus test RA. Robust overfitting =
test RA at the best-val-RA epoch minus test RA at the last epoch, from the training history.
"""
from __future__ import annotations

from pydantic import Field

from pipeline.attacks import AttackConfig
from pipeline.evaluation import evaluate, robust_gap, summarize_history
from pipeline.stage import Stage, StageConfig


class EvaluateConfig(StageConfig):
    attack: AttackConfig = Field(default_factory=lambda: AttackConfig(kind="pgd", steps=20),
                                 description="evaluation attack (PGD-20, 8/255, step 2/255, random start by default)")
    batch_size: int = Field(default=256, gt=0)
    train_limit: int | None = Field(default=None, gt=0, description="first N images of the non-augmented train split for the gap")
    val_limit: int | None = Field(default=None, gt=0)
    test_limit: int | None = Field(default=None, gt=0)


class Evaluate(Stage):
    Config = EvaluateConfig
    summary = "SA / RA (PGD via advertorch), robust generalization gap, robust overfitting"

    def run(self, ctx) -> None:
        cfg: EvaluateConfig = ctx.config
        data = ctx.data()
        model, masks, card = ctx.load_input_model()
        m: dict = {}
        for split, x, y, limit in (("train", data.train_x, data.train_y, cfg.train_limit),
                                   ("val", data.val_x, data.val_y, cfg.val_limit),
                                   ("test", data.test_x, data.test_y, cfg.test_limit)):
            if len(y) == 0:
                continue
            clean = evaluate(model, x, y, batch_size=cfg.batch_size, device=ctx.device, limit=limit)
            adv = evaluate(model, x, y, batch_size=cfg.batch_size, attack=cfg.attack, device=ctx.device,
                           limit=limit, seed=ctx.seed)
            m[f"{split}_sa"], m[f"{split}_ra"], m[f"{split}_n"] = clean["acc"], adv["acc"], clean["n"]
            m[f"{split}_robust_loss"] = adv["loss"]
            ctx.log(f"[{ctx.name}] {split}: SA {clean['acc']:.2f}  RA {adv['acc']:.2f}  (n={clean['n']})")
        if "train_ra" in m and "test_ra" in m:
            m["robust_gap"] = robust_gap(m["train_ra"], m["test_ra"])

        history = ctx.input.model_stage().history()
        if history:
            summary = summarize_history(history)
            m.update({f"history_{k}": v for k, v in summary.items()})
            if "RA_diff" in summary:
                m["robust_overfitting"] = summary["RA_diff"]
            if "test_ra" in m and "train_acc" in history[-1] and history[-1].get("train_acc") is not None:
                m["robust_gap_running_train"] = robust_gap(history[-1]["train_acc"], m["test_ra"])
        if masks is not None:
            m["density"] = float(masks.density())
        m["attack"] = cfg.attack.model_dump(mode="json")
        ctx.metrics.update(m)
        ctx.write_json("metrics.json", m)
        ctx.pass_model_through()
