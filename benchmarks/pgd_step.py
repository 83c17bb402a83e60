"""Seconds per PGD-10 adversarial training step: our step vs the papers' advertorch loop.

Reference (as the SW/DW code does it): fp32, advertorch `LinfPGDAttack(...).perturb` inside
`ctx_noparamgrad(model)`, model in train mode, then forward / CE / backward / SGD step.
Ours: `adversarial_train_step` with `pgd_linf`; on CUDA bf16 autocast + channels_last (on CPU fp32
and contiguous unless --precision / --channels-last say otherwise); torch.compile with --compile.
Same model (preact_resnet18, 10 classes), batch and optimizer settings, one process; warm-up, then
the two alternate and the medians are compared. On CPU the speedup uses process CPU time by default
(--clock), because wall time on a shared machine mostly measures the other processes.

    python benchmarks/pgd_step.py --device cpu --repeats 3
The last line printed is `speedup: X.XXx (reference/ours)`.
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.metrics.attacks import AttackConfig, make_train_attack
from pipeline.metrics.advertorch_compat import import_advertorch
from pipeline.models import create_model
from pipeline.train.step import adversarial_train_step

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
EPS, STEP, STEPS = 8 / 255, 2 / 255, 10


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def reference_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    import_advertorch()
    from advertorch.attacks import LinfPGDAttack
    from advertorch.context import ctx_noparamgrad

    optimizer = _sgd(model)
    adversary = LinfPGDAttack(model, loss_fn=nn.CrossEntropyLoss(reduction="sum"), eps=EPS, nb_iter=STEPS,
                              eps_iter=STEP, rand_init=True, clip_min=0.0, clip_max=1.0, targeted=False)

    def step() -> float:
        model.train()
        with ctx_noparamgrad(model):
            x_adv = adversary.perturb(x, y)
        loss = F.cross_entropy(model(x_adv), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()  # the papers log the loss every step

    return step


def our_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, autocast_dtype: torch.dtype | None,
                channels_last: bool, compile_model: bool) -> Callable[[], float]:
    optimizer = _sgd(model)
    attack = make_train_attack(AttackConfig(eps=EPS, step=STEP, steps=STEPS))
    generator = torch.Generator(device=x.device).manual_seed(0)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_model else model

    def step() -> float:
        out = adversarial_train_step(net, optimizer, x, y, attack=attack, generator=generator,
                                     autocast_dtype=autocast_dtype)
        return out.loss.item()

    return step


def _timed(step: Callable[[], float], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one step; CUDA work is synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if not math.isfinite(loss):
        raise RuntimeError(f"non-finite training loss {loss}")
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 on CUDA, 32 on CPU")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per path (default: 10 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per path (default: 3 CUDA, 1 CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 on CPU, so spin-waiting threads do not pad the CPU time)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="our path's autocast (auto: bf16 on CUDA, fp32 on CPU); the reference is fp32")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="our path in channels_last layout (default: on CUDA only)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our model")
    parser.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                        help="what the speedup divides (auto: cpu time on CPU, wall time on CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available")
    on_cuda = device.type == "cuda"
    if args.clock == "cpu" and on_cuda:
        parser.error("--clock cpu measures host CPU time only; use wall on CUDA")
    batch_size = args.batch_size or (128 if on_cuda else 32)
    repeats = args.repeats or (10 if on_cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if on_cuda else 1)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and on_cuda)
    channels_last = on_cuda if args.channels_last is None else args.channels_last
    clock = args.clock if args.clock != "auto" else ("wall" if on_cuda else "cpu")
    threads = args.threads or (None if on_cuda else 1)
    if threads:
        torch.set_num_threads(threads)
    if on_cuda:
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(args.seed)
    base = create_model("preact_resnet18", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD).to(device)
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    steps = {
        "reference": reference_step_fn(copy.deepcopy(base), x, y),
        "ours": our_step_fn(copy.deepcopy(base), x, y, autocast_dtype=torch.bfloat16 if bf16 else None,
                            channels_last=channels_last, compile_model=args.compile),
    }
    for _ in range(warmup):
        for step in steps.values():
            _timed(step, device)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for r in range(repeats):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))  # alternate to spread drift evenly
        for name in order:
            times[name].append(_timed(steps[name], device))

    what = torch.cuda.get_device_name(device) if on_cuda else f"cpu, {torch.get_num_threads()} threads"
    details = {
        "reference": "fp32, advertorch LinfPGDAttack + ctx_noparamgrad",
        "ours": ", ".join(["pgd_linf", "bf16 autocast" if bf16 else "fp32"]
                          + ["channels_last"] * channels_last + ["compiled"] * args.compile),
    }
    print(f"PGD-{STEPS} training step, preact_resnet18, batch {batch_size}, {what}, torch {torch.__version__}")
    print(f"warm-up {warmup}, timed {repeats} per path (alternating); speedup from median {clock} time")
    print(f"{'path':<10} {'wall s/step':>12} {'min wall':>9} {'cpu s/step':>11}  details")
    median = {}
    for name, ts in times.items():
        walls, cpus = [w for w, _ in ts], [c for _, c in ts]
        median[name] = statistics.median(walls if clock == "wall" else cpus)
        cpu_col = f"{statistics.median(cpus):>11.4f}" if not on_cuda else f"{'-':>11}"
        print(f"{name:<10} {statistics.median(walls):>12.4f} {min(walls):>9.4f} {cpu_col}  {details[name]}")
    print(f"speedup: {median['reference'] / median['ours']:.2f}x (reference/ours)")


if __name__ == "__main__":
    main()
