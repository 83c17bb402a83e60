"""The training loop shared by every stage that trains: dense warmup, fine-tuning, tickets, rewiring.

It owns what a stage should not have to think about: the learning-rate schedule, per-epoch evaluation,
best-checkpoint tracking on val RA, and progress saves that let a killed run continue bit-identically
on CPU. Randomness comes from generators seeded by (run seed, epoch, step), so a resumed run draws the
same data order, augmentations and attack starts without replaying anything.

Sparsity plugs in through `TrainingHooks` (re-apply masks after each step, read gradients, rewire the
topology, stop early when an early-bird ticket appears) and the hooks' state is saved with the progress.
"""
from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass

import torch

from pipeline.engine import distributed, store
from pipeline.metrics.flops import FlopsRecord, InferenceFlops, TrainingFlopsMeter, count_macs, inference_flops
from pipeline.metrics.attacks import make_train_attack
from pipeline.engine.errors import ConfigError
from pipeline.data import DataSplits, num_batches, training_batches
from pipeline.metrics.evaluation import evaluate, summarize_history
from pipeline.engine.seeding import eval_attack_seed
from pipeline.train.hooks import TrainingHooks, cpu_state  # noqa: F401  (re-exported)
from pipeline.train.ddp import DistributedTraining
from pipeline.train import finite
from pipeline.train.step import adversarial_train_step


from pipeline.train.config import (  # noqa: F401  (moved; the old names stay importable)
    EvalConfig, OptimizerConfig, ScheduleConfig, TrainingConfig)


def lr_at(schedule: ScheduleConfig, base_lr: float, epoch: int, step: int, steps_per_epoch: int, epochs: int) -> float:
    t = epoch + step / max(steps_per_epoch, 1)  # fractional epoch
    if schedule.kind == "constant":
        return base_lr
    if schedule.kind == "multistep":
        return base_lr * schedule.gamma ** sum(1 for m in schedule.milestones if epoch >= m)
    if schedule.kind == "cosine":
        return schedule.min_lr + (base_lr - schedule.min_lr) * 0.5 * (1 + math.cos(math.pi * t / epochs))
    peak = schedule.peak_fraction * epochs  # cyclic (fast AT)
    return base_lr * (t / peak if t <= peak else max(0.0, (epochs - t) / (epochs - peak)))


# Fault injection for the resume tests: the process SIGKILLs itself after this many training steps of
# one stage (counted over all train() calls of the stage, e.g. IMP rounds).
_FAULT_AFTER_STEPS = int(os.environ.get("PIPELINE_FAULT_AFTER_STEPS", "0") or 0)
_steps_per_stage: dict = {}

@dataclass
class TrainResult:
    history: list[dict]
    best_epoch: int | None
    best_state: dict | None
    final_state: dict
    stopped_early: bool = False
    steps: int = 0
    select_key: str = "val_ra"

    def summary(self) -> dict:
        """RA/SA best, final and their differences, with best chosen as training chose it (spec §1.1)."""
        return summarize_history(self.history, self.select_key)

    def metrics(self, select: str | None = None) -> dict:
        """A training stage's metrics: the summary, which checkpoint it kept, epochs and steps run."""
        return {**self.summary(), **({"selected": select} if select is not None else {}),
                "epochs_run": len(self.history), "steps": self.steps}

    def chosen_state(self, select: str) -> dict:
        return self.best_state if select == "best" and self.best_state is not None else self.final_state


def train(ctx, cfg: TrainingConfig, model: torch.nn.Module, data: DataSplits,
          hooks: TrainingHooks | None = None) -> TrainResult:
    hooks = hooks or TrainingHooks()
    if len(data.val_y) == 0:
        raise ConfigError(f"stages.{ctx.name}: the dataset has no validation split (data.val_size is 0); training "
                          "chooses its best checkpoint (and Flying Bird+ its signals) on val: set val_size >= 1")
    device = ctx.device
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt_cfg = cfg.optimizer
    optimizer = torch.optim.SGD(model.parameters(), lr=opt_cfg.lr, momentum=opt_cfg.momentum,
                                weight_decay=opt_cfg.weight_decay, nesterov=opt_cfg.nesterov)
    dtrain = DistributedTraining(model, device, ctx.pipeline_config.run.distributed, batch_size=cfg.batch_size,
                                 n_train=len(data.train_y), drop_last=cfg.drop_last, where=f"stages.{ctx.name}")
    forward_model = torch.compile(dtrain.forward_model) if cfg.compile else dtrain.forward_model
    attack = dtrain.attack(make_train_attack(cfg.attack))
    autocast = torch.bfloat16 if cfg.precision == "bf16" else None
    steps_per_epoch = num_batches(len(data.train_y), cfg.batch_size, cfg.drop_last)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    select_key = cfg.select_key
    # best weights go to a new file per epoch; the progress state names the current one (see save_progress)
    best_file: str | None = None
    best_sha: str | None = None
    layer_macs = count_macs(model, (data.in_chans, *data.input_size))
    dense_flops = inference_flops(layer_macs)["dense_flops"]
    meter = TrainingFlopsMeter(mode=cfg.mode, attack_steps=cfg.attack.steps if cfg.mode == "pgd" else None)
    board = _TensorBoard(ctx)

    epoch, step_in_epoch, global_step = 0, 0, 0
    sums = {"loss": 0.0, "correct": 0, "n": 0, "seconds": 0.0}
    best_epoch, best_value, best_state = None, -math.inf, None
    hooks.on_start(model, optimizer)

    saved = ctx.load_progress()
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        hooks.load_state_dict(saved.get("hooks", {}))
        meter.load_state_dict(saved["flops"])
        epoch, step_in_epoch, global_step = saved["epoch"], saved["step_in_epoch"], saved["global_step"]
        sums = dict(saved["sums"])
        best_epoch, best_value, best_file = saved["best_epoch"], saved["best_value"], saved["best_file"]
        best_sha = saved["best_sha256"]
        distributed.check_resume_world(saved.get("world_size", 1), f"stages.{ctx.name}")
        if best_file is not None:
            best_state = store.load_tensors(ctx.progress_dir / best_file, saved["best_sha256"])

    def save_progress() -> None:
        finite.check_weights(ctx.name, model, global_step, cfg)  # never save diverged weights
        ctx.save_progress({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "hooks": hooks.state_dict(),
            "flops": meter.state_dict(),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step, "step": global_step,
            "sums": dict(sums), "best_epoch": best_epoch, "best_value": best_value, "best_file": best_file,
            "best_sha256": best_sha,
            **({"world_size": distributed.world_size()} if distributed.world_size() > 1 else {}),
        })
        for old in ctx.progress_dir.glob("best-e*.safetensors") if distributed.is_main() else ():
            if old.name != best_file:
                old.unlink(missing_ok=True)

    def sparse_flops() -> float:
        return inference_flops(layer_macs, hooks.densities())["sparse_flops"]

    f_now = sparse_flops()
    stopped = False
    with ctx.console.bar(cfg.epochs, f"{ctx.name} epochs", initial=epoch, leave=True) as ebar:
        while epoch < cfg.epochs and not stopped:
            model.train()
            t0 = time.time()
            loss_acc = torch.zeros((), device=device)
            correct_acc = torch.zeros((), device=device, dtype=torch.long)
            n_acc = 0
            with ctx.console.bar(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", initial=step_in_epoch) as bbar:
                batches = training_batches(data, batch_size=cfg.batch_size, seed=ctx.seed, epoch=epoch,
                                           device=device, start_batch=step_in_epoch, drop_last=cfg.drop_last,
                                           shard=dtrain.shard_spec())
                for x, y in batches:
                    if step_in_epoch >= steps_per_epoch:
                        break
                    if cfg.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    lr = lr_at(cfg.schedule, opt_cfg.lr, epoch, step_in_epoch, steps_per_epoch, cfg.epochs)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    gen = ctx.generator(epoch, step_in_epoch, 1)
                    step_no = global_step
                    images = dtrain.begin_step(step_in_epoch, int(y.shape[0]))
                    changed = []
                    out = adversarial_train_step(
                        forward_model, optimizer, x, y, attack=attack, generator=gen, autocast_dtype=autocast,
                        after_backward=lambda: hooks.after_backward(step_no),
                        after_step=lambda: changed.append(hooks.after_step(step_no)))
                    meter.accumulate(images, f_now, dense_flops if hooks.dense_grad_step(step_no) else None)
                    if any(changed):
                        f_now = sparse_flops()
                    loss_acc += out.loss.detach() * out.n
                    correct_acc += out.correct
                    n_acc += out.n
                    step_in_epoch += 1
                    global_step += 1
                    bbar.update(1)
                    if global_step % finite.CHECK_EVERY == 0:
                        finite.check_loss(ctx.name, loss_acc, epoch, global_step, cfg)
                    if _FAULT_AFTER_STEPS and distributed.fault_injected_here():
                        done = _steps_per_stage[ctx.dir] = _steps_per_stage.get(ctx.dir, 0) + 1
                        if done == _FAULT_AFTER_STEPS:
                            os.kill(os.getpid(), signal.SIGKILL)
                    if cfg.progress_every_steps and global_step % cfg.progress_every_steps == 0 \
                            and step_in_epoch < steps_per_epoch:
                        sums = _fold(sums, loss_acc, correct_acc, n_acc, time.time() - t0)
                        loss_acc.zero_(); correct_acc.zero_(); n_acc = 0; t0 = time.time()
                        save_progress()
            sums = _fold(sums, loss_acc, correct_acc, n_acc, time.time() - t0)
            finite.check_loss(ctx.name, sums["loss"], epoch, global_step, cfg)
            row = {
                "epoch": epoch + 1,
                "lr": lr_at(cfg.schedule, opt_cfg.lr, epoch, 0, steps_per_epoch, cfg.epochs),
                "train_loss": sums["loss"] / max(sums["n"], 1),
                "train_acc": 100.0 * sums["correct"] / max(sums["n"], 1),
                "train_seconds": round(sums["seconds"], 3),
            }

            def evaluate_epoch() -> None:
                nonlocal best_value, best_epoch, best_state, best_file, best_sha
                t1 = time.time()
                row.update(evaluate_splits(model, data, cfg.eval, device, ctx.seed, epoch))
                row["eval_seconds"] = round(time.time() - t1, 3)
                value = row.get(select_key)
                if value is not None and value > best_value:
                    best_value, best_epoch = value, epoch + 1
                    best_state = cpu_state(model)
                    best_file = f"best-e{best_epoch:04d}.safetensors"
                    best_sha = store.save_tensors(ctx.progress_dir / best_file, best_state)

            if (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.epochs:
                evaluate_epoch()
            stopped = bool(hooks.end_epoch(epoch, row))
            if stopped and "eval_seconds" not in row:
                evaluate_epoch()  # the weights leaving the stage are always judged
            f_now = sparse_flops()  # end_epoch may change the topology too (early bird, FB+)
            ctx.log_epoch(row)
            board.log(row)
            ctx.console.info(_epoch_line(ctx.name, row, cfg.epochs))
            epoch += 1
            step_in_epoch = 0
            sums = {"loss": 0.0, "correct": 0, "n": 0, "seconds": 0.0}
            if stopped:
                break
            save_progress()
            ebar.update(1)
    board.close()
    dtrain.close()
    final = inference_flops(layer_macs, hooks.densities())
    ctx.record["flops"] = FlopsRecord(inference=InferenceFlops(final["dense_flops"], final["sparse_flops"], final["ratio"]),
                                      training=meter.record(final)).to_json()
    if dtrain.on:
        ctx.record["distributed"] = dtrain.record()
    return TrainResult(history=list(ctx.history), best_epoch=best_epoch, best_state=best_state,
                       final_state=cpu_state(model), stopped_early=stopped, steps=global_step, select_key=select_key)


class _TensorBoard:
    """Per-epoch scalars under <run>/tensorboard/<stage>; silently off if tensorboard is not installed."""

    def __init__(self, ctx):
        self._dir = ctx.run_dir / "tensorboard" / ctx.name
        self._writer = None
        self._failed = False

    def log(self, row: dict) -> None:
        if self._failed or not distributed.is_main():  # one writer under torchrun
            return
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard is an optional extra for users of their own environment
                self._failed = True
                return
            self._writer = SummaryWriter(log_dir=str(self._dir))
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, global_step=row["epoch"])
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _fold(sums: dict, loss_acc: torch.Tensor, correct_acc: torch.Tensor, n: int, seconds: float) -> dict:
    # one host sync per fold instead of one per step
    if distributed.active():  # every rank keeps the global sums (rank 0 saves them for all)
        total = distributed.all_reduce_sum(torch.stack([loss_acc.double(), correct_acc.double(),
                                                        torch.tensor(float(n), device=loss_acc.device)]))
        loss_acc, correct_acc, n = total[0], total[1].long(), int(total[2])
    return {"loss": sums["loss"] + float(loss_acc), "correct": sums["correct"] + int(correct_acc),
            "n": sums["n"] + n, "seconds": sums["seconds"] + seconds}


def evaluate_splits(model: torch.nn.Module, data: DataSplits, ecfg: EvalConfig, device, seed: int, epoch: int) -> dict:
    """Val and test SA (and RA under the eval attack) for one history row."""
    row: dict = {}
    for split, x, y, limit in (("val", data.val_x, data.val_y, ecfg.val_limit),
                               ("test", data.test_x, data.test_y, ecfg.test_limit)):
        if len(y) == 0:
            continue
        clean = evaluate(model, x, y, batch_size=ecfg.batch_size, attack=None, device=device, limit=limit)
        row[f"{split}_sa"] = clean["acc"]
        row[f"{split}_loss"] = clean["loss"]
        row[f"{split}_n"] = clean["n"]  # so every RA figure read from the history can state its n
        if ecfg.robust:
            adv = evaluate(model, x, y, batch_size=ecfg.batch_size, attack=ecfg.attack, device=device,
                           limit=limit, seed=eval_attack_seed(seed, epoch))
            row[f"{split}_ra"] = adv["acc"]
            row[f"{split}_robust_loss"] = adv["loss"]
    return row


def _epoch_line(name: str, row: dict, epochs: int) -> str:
    parts = [f"[{name}] epoch {row['epoch']}/{epochs}", f"lr {row['lr']:.4g}",
             f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}"]
    for key in ("val_sa", "val_ra", "test_sa", "test_ra"):
        if key in row:
            parts.append(f"{key} {row[key]:.2f}")
    parts.append(f"{row['train_seconds'] + row.get('eval_seconds', 0):.1f}s")
    return "  ".join(parts)

