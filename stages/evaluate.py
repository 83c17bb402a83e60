"""evaluate: SA, RA under several attacks, robust gap and overfitting at the best and final checkpoints,
and corruption robustness, of the input model.

Definitions (spec §1.1):
- RA: accuracy on adversarial examples of the evaluation attack, model in eval mode.
- Robust generalization gap (canonical): RA on the fixed, non-augmented train split minus test RA.
  Running-train variant (the Robust Bird script's): the training history's running adversarial train
  accuracy of the checkpoint's epoch minus test RA.
- Robust overfitting: test RA at the best-val-RA epoch minus test RA at the last epoch, from the
  training history (`robust_overfitting`); and measured here with this stage's first attack on the two
  kept checkpoints (`robust_overfitting_measured`) when the training stage kept both.

The checkpoint the input stage selected (model.safetensors) gets every attack and the corruptions;
the other of best/final, when kept, gets SA and the first attack (enough for gap and overfitting).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from pipeline.metrics.attacks import AttackConfig
from pipeline.metrics.autoattack import INSTALL_HINT, AutoAttackConfig, find_autoattack, missing_message, run_autoattack
from pipeline.corruptions.benchmark import CorruptionConfig, evaluate_corruptions, generation_parameters
from pipeline.corruptions.published import load_published
from pipeline.engine.errors import ConfigError, PipelineError
from pipeline.metrics.evaluation import evaluate, robust_gap, summarize_history
from pipeline.engine.stage import Stage, StageConfig

SPLITS = ("train", "val", "test")


class PGDEvalConfig(AttackConfig):
    """PGD (advertorch) or FGSM-RS for evaluation; an example counts as robust only if it survives every restart."""

    kind: Literal["pgd", "fgsm_rs"] = "pgd"
    steps: int = Field(20, gt=0)
    name: str | None = Field(default=None, description="label of this figure in metrics['ra'] (default e.g. pgd20, pgd50r5)")
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: list(SPLITS), min_length=1)

    @model_validator(mode="after")
    def _one_step_fgsm(self):
        # FGSM-RS is one step whatever `steps` says; record what runs
        if self.kind == "fgsm_rs" and self.steps != 1:
            if "steps" in self.model_fields_set:
                raise ValueError(f"steps: FGSM-RS takes one step, got {self.steps}; use kind 'pgd' for more")
            object.__setattr__(self, "steps", 1)
        return self

    def label(self) -> str:
        if self.name:
            return self.name
        base = "fgsm_rs" if self.kind == "fgsm_rs" else f"pgd{self.steps}"
        base += f"r{self.restarts}" if self.restarts > 1 else ""
        return base + ("" if abs(self.eps - 8 / 255) < 1e-12 else f"_eps{self.eps * 255:g}")


EvalAttack = Annotated[Union[PGDEvalConfig, AutoAttackConfig], Field(discriminator="kind")]


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
    corruptions: CorruptionConfig | None = Field(
        default=None, description="corruption robustness, off when unset: {path (published CIFAR-10-C layout), "
        "generate, types, severities, limit, seed, backend: builtin|imagecorruptions, batch_size}")

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


@dataclass
class Checkpoint:
    which: str  # best | final | unknown
    file: str
    epoch: int | None


def kept_checkpoints(holder) -> list[Checkpoint]:
    """The input's weights: model.safetensors first, then the other of best/final if it was kept."""
    info = holder.record.get("checkpoints") or {}
    files: dict = info.get("files") or {}
    history = holder.history()
    final_epoch = info.get("final_epoch") or (history[-1].get("epoch", len(history)) if history else None)
    best_epoch = info.get("best_epoch")
    if best_epoch is None:
        best_epoch = history_summary(history).get("best_epoch")
    selected = files.get("model.safetensors") or holder.metrics.get("selected")
    if selected not in ("best", "final"):
        selected = "unknown"
    epochs = {"best": best_epoch, "final": final_epoch, "unknown": None}
    out = [Checkpoint(selected, "model.safetensors", epochs[selected])]
    for fname, which in files.items():
        if fname != "model.safetensors" and which in ("best", "final") and holder.has_file(fname):
            out.append(Checkpoint(which, fname, epochs[which]))
    return out


def history_summary(history: list[dict]) -> dict:
    """summarize_history on val RA, as training selects; on val SA for runs evaluated without attacks."""
    for key in ("val_ra", "val_sa"):
        try:
            return summarize_history(history, key)
        except PipelineError:
            continue
    return {}


def _same_weights(holder) -> set[str]:
    """{'best', 'final'} when the input's best epoch is its last (so model.safetensors is both)."""
    info = holder.record.get("checkpoints") or {}
    best, final = info.get("best_epoch"), info.get("final_epoch")
    return {"best", "final"} if best is not None and best == final else set()


def _split_data(data, split: str, cfg: EvaluateConfig):
    x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
    if len(x) != len(y):  # a streamed dataset keeps its training images on disk (pipeline.data.streaming)
        raise ConfigError(f"stages.{cfg.name}.splits: the {split} split of streamed data ({data.source}) is not "
                          f"held in memory; evaluate val and test only (splits: [val, test])")
    return x, y, getattr(cfg, f"{split}_limit")


def _min_limit(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


class Evaluate(Stage):
    Config = EvaluateConfig
    summary = "SA / RA (PGD via advertorch, AutoAttack), robust gap and overfitting at best and final, corruptions"
    collective = True

    def run(self, ctx) -> None:
        cfg: EvaluateConfig = ctx.config
        data = ctx.data()
        skipped = self._preflight(cfg, ctx)
        holder = ctx.input.model_stage()
        history = holder.history()
        if (holder.record.get("config") or {}).get("mode") == "clean":
            history_for_gap = []  # its running train accuracy is on clean batches: no robust gap to read
        else:
            history_for_gap = history
        checkpoints = kept_checkpoints(holder)
        if cfg.checkpoints == "selected":
            checkpoints = checkpoints[:1]

        results: dict[str, dict] = {}
        for i, ck in enumerate(checkpoints):
            model, masks, card = ctx.input.load_model(ctx.device, weights=ck.file)
            attacks = cfg.attacks if i == 0 else cfg.attacks[:1]
            ctx.log(f"[{ctx.name}] checkpoint {ck.which} ({ck.file}, epoch {ck.epoch})")
            res = self._judge(ctx, cfg, model, data, attacks, skipped if i == 0 else {})
            res.update(_gaps(res, cfg.attacks[0].label(), history_for_gap, ck.epoch))
            results[ck.which] = _compact(res, ck)
            if i == 0:
                primary, primary_model, primary_masks = res, model, masks

        same = _same_weights(holder)
        if same and len(results) == 1 and checkpoints[0].which in same:
            # best epoch = last epoch: one set of weights is both checkpoints
            other = ({"best", "final"} - {checkpoints[0].which}).pop()
            results[other] = {**results[checkpoints[0].which], "same_as": checkpoints[0].which}
        m = _flat_metrics(primary, cfg.attacks[0], checkpoints[0].which)
        m["ra"] = primary["ra"]
        m["checkpoints"] = results
        summary = history_summary(history)
        m.update({f"history_{k}": v for k, v in summary.items()})
        if summary.get("RA_diff") is not None:
            m["robust_overfitting"] = summary["RA_diff"]
        if {"best", "final"} <= results.keys():
            first = cfg.attacks[0].label()
            best_ra = results["best"]["ra"].get(first, {}).get("test")
            final_ra = results["final"]["ra"].get(first, {}).get("test")
            if best_ra is not None and final_ra is not None:
                m["robust_overfitting_measured"] = best_ra - final_ra
        for which in ("best", "final"):
            if which in results and results[which].get("robust_gap") is not None:
                m[f"robust_gap_{which}"] = results[which]["robust_gap"]
        if primary_masks is not None:
            m["density"] = float(primary_masks.density())

        if cfg.corruptions is not None:
            corr = evaluate_corruptions(primary_model, data.test_x, data.test_y, cfg.corruptions, device=ctx.device,
                                        batch_size=cfg.batch_size, num_classes=data.num_classes,
                                        log=lambda msg: ctx.log(f"[{ctx.name}] {msg}"))
            corr["checkpoint"] = checkpoints[0].which
            m["corruption"] = corr
            full = dict(corr)
            if corr["source"] == "generated" and corr["backend"] == "builtin":
                full["parameters"] = generation_parameters(corr["types"])
            ctx.write_json("corruption.json", full)
            mean15 = "n/a" if corr["mean_acc_15"] is None else f"{corr['mean_acc_15']:.2f}"
            ctx.log(f"[{ctx.name}] corruptions ({corr['source']}): mean {corr['mean_acc']:.2f}  "
                    f"mean of the 15 standard {mean15}  clean {corr['clean_acc']:.2f}")

        ctx.metrics.update(m)
        ctx.write_json("metrics.json", m)
        ctx.pass_model_through()

    @staticmethod
    def _preflight(cfg: EvaluateConfig, ctx) -> dict[str, str]:
        """Fail before any work when a required AutoAttack or a published corruption set is missing or
        malformed; note the attacks to skip."""
        skipped = {}
        c = cfg.corruptions
        if c is not None and c.path is not None and c.path.is_dir():
            load_published(c.path, c.types)  # reads the layout (labels.npy, one .npy per type) or raises
        for a in cfg.attacks:
            if isinstance(a, AutoAttackConfig) and find_autoattack(a.backend) is None:
                if a.on_missing == "error":
                    raise PipelineError(missing_message(a))
                skipped[a.label()] = f"not installed; install with: {INSTALL_HINT}"
                ctx.log(f"[{ctx.name}] skipping {a.label()}: not installed")
        return skipped

    @staticmethod
    def _judge(ctx, cfg: EvaluateConfig, model, data, attacks, skipped: dict[str, str]) -> dict:
        sa: dict[str, float] = {}
        n: dict[str, int] = {}
        clean_loss: dict[str, float] = {}
        for split in SPLITS:
            x, y, limit = _split_data(data, split, cfg)
            if len(y) == 0:
                continue
            out = evaluate(model, x, y, batch_size=cfg.batch_size, device=ctx.device, limit=limit)
            sa[split], n[split], clean_loss[split] = out["acc"], out["n"], out["loss"]
        ra: dict[str, dict] = {}
        for attack in attacks:
            label = attack.label()
            entry: dict[str, Any] = {"attack": attack.model_dump(mode="json")}
            if label in skipped:
                entry["skipped"] = skipped[label]
                ra[label] = entry
                continue
            for split in attack.splits:
                x, y, limit = _split_data(data, split, cfg)
                if len(y) == 0:
                    continue
                if isinstance(attack, AutoAttackConfig):
                    lim = _min_limit(limit, attack.n) or len(y)
                    out = run_autoattack(model, x[:lim], y[:lim], attack, device=ctx.device, seed=ctx.seed,
                                         batch_size=attack.batch_size or cfg.batch_size)
                    entry["backend"] = out["backend"]
                else:
                    out = evaluate(model, x, y, batch_size=cfg.batch_size, attack=attack, device=ctx.device,
                                   limit=limit, seed=ctx.seed)
                    entry.setdefault("robust_loss", {})[split] = out["loss"]
                entry[split] = out["acc"]
                entry.setdefault("n", {})[split] = out["n"]
                ctx.log(f"[{ctx.name}] {label} {split}: RA {out['acc']:.2f}  (SA {sa[split]:.2f}, n={out['n']})")
            if "train" in entry and "test" in entry:
                entry["gap"] = robust_gap(entry["train"], entry["test"])
            ra[label] = entry
        return {"sa": sa, "n": n, "clean_loss": clean_loss, "ra": ra}


def _gaps(res: dict, first: str, history: list[dict], epoch: int | None) -> dict:
    """Canonical and running-train gaps of one checkpoint under the first attack."""
    out: dict[str, float | None] = {}
    entry = res["ra"].get(first, {})
    out["robust_gap"] = entry.get("gap")
    row = next((r for r in history if r.get("epoch") == epoch), None) if epoch is not None else None
    train_acc = row.get("train_acc") if row else None
    out["robust_gap_running_train"] = (robust_gap(train_acc, entry["test"])
                                       if train_acc is not None and "test" in entry else None)
    out["running_train_acc"] = train_acc
    return out


def _compact(res: dict, ck: Checkpoint) -> dict:
    """One checkpoint's figures without the attack parameters (those sit once in metrics['ra'])."""
    ra = {label: ({"skipped": True} if "skipped" in e else {s: e[s] for s in (*SPLITS, "gap") if s in e})
          for label, e in res["ra"].items()}
    return {"file": ck.file, "epoch": ck.epoch, "sa": res["sa"], "n": res["n"], "ra": ra,
            **{k: res[k] for k in ("robust_gap", "robust_gap_running_train", "running_train_acc")}}


def _flat_metrics(res: dict, first, which: str) -> dict:
    """The flat keys of the selected checkpoint under the first attack (what reports and tests read)."""
    m: dict[str, Any] = {"checkpoint": which}
    entry = res["ra"].get(first.label(), {})
    for split in SPLITS:
        if split not in res["sa"]:
            continue
        m[f"{split}_sa"], m[f"{split}_n"] = res["sa"][split], res["n"][split]
        m[f"{split}_loss"] = res["clean_loss"][split]
        if split in entry:
            m[f"{split}_ra"] = entry[split]
            if "robust_loss" in entry:
                m[f"{split}_robust_loss"] = entry["robust_loss"][split]
    for key in ("robust_gap", "robust_gap_running_train"):
        if res.get(key) is not None:
            m[key] = res[key]
    m["attack"] = first.model_dump(mode="json")
    return m
