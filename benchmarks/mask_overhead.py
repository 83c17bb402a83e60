"""Cost of dynamic sparsity on top of a training step: mask enforcement per step, and one topology update.

Same model (preact_resnet18, 10 classes), same batch, same optimizer (SGD 0.1 / 0.9 / 5e-4); the dense
step is `adversarial_train_step` alone, the rewire step adds `RewireHooks` (Flying Bird at density 0.2,
IGQ) with no update falling in the timed steps. Steps alternate after a warm-up; the ratio is the median
of the per-pair ratios. Time is process CPU time by default (`--clock cpu`, one thread), so other
processes on a shared machine do not inflate either side; `--clock wall` for wall-clock time.
Then one topology update is timed (Flying Bird: random growth; RigL: gradient growth, including the
gradient copy) and compared with a training step, alone and amortised over its update interval.

    python benchmarks/mask_overhead.py                    # clean steps, batch 32, 1 thread, CPU
    python benchmarks/mask_overhead.py --attack-steps 2   # PGD-2 steps
The last line printed is `ratio: X.XXX (rewire step / dense step, median of paired ratios)`.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from pipeline.metrics.attacks import AttackConfig, make_train_attack
from pipeline.models import create_model
from pipeline.sparsity.dst import RewireHooks, Schedule, build_method, resolve_sparsity
from pipeline.train.step import adversarial_train_step

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def _hooks(method_name: str, model: torch.nn.Module, optimizer, *, update_every: int, total_steps: int) -> RewireHooks:
    settings = resolve_sparsity(method_name, update_every=update_every, second_update_every=None,
                                second_after_epoch=None)
    schedule = Schedule.from_settings(settings, steps_per_epoch=total_steps, epochs=1)
    method = build_method(method_name, settings, 0.2, schedule, seed=1)
    hooks = RewireHooks(method, method.start(model))
    hooks.on_start(model, optimizer)
    return hooks


_CLOCK = [time.process_time]


def _timed(fn) -> float:
    t0 = _CLOCK[0]()
    fn()
    return _CLOCK[0]() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--attack-steps", type=int, default=0, help="0: clean steps; k: PGD-k steps")
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--updates", type=int, default=3, help="timed topology updates per method")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = ap.parse_args()
    _CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    dense = create_model("preact_resnet18", num_classes=10, in_chans=3, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    sparse = copy.deepcopy(dense)
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    attack = make_train_attack(AttackConfig(kind="pgd", steps=args.attack_steps)) if args.attack_steps else None
    opt_dense, opt_sparse = _sgd(dense), _sgd(sparse)
    never = 10**9
    hooks = _hooks("flying_bird", sparse, opt_sparse, update_every=never, total_steps=never)

    def dense_step():
        adversarial_train_step(dense, opt_dense, x, y, attack=attack, generator=torch.Generator().manual_seed(0))

    step_no = [0]

    def rewire_step():
        s = step_no[0]
        adversarial_train_step(sparse, opt_sparse, x, y, attack=attack, generator=torch.Generator().manual_seed(0),
                               after_backward=lambda: hooks.after_backward(s), after_step=lambda: hooks.after_step(s))
        step_no[0] += 1

    enforce_times = []
    for _ in range(2):  # warm-up (allocations, momentum buffers)
        dense_step(), rewire_step()
    t_dense, t_rewire = [], []
    for _ in range(args.repeats):
        t_dense.append(_timed(dense_step))
        t_rewire.append(_timed(rewire_step))
        enforce_times.append(_timed(hooks.enforcer))
    d, r = statistics.median(t_dense), statistics.median(t_rewire)
    ratio = statistics.median(b / a for a, b in zip(t_dense, t_rewire))
    kind = f"PGD-{args.attack_steps}" if args.attack_steps else "clean"
    print(f"preact_resnet18, batch {args.batch}, {kind} step, {args.threads} thread(s), {args.repeats} alternating "
          f"repeats, {args.clock} clock")
    print(f"dense step   median {d * 1e3:8.1f} ms  (min {min(t_dense) * 1e3:.1f})")
    print(f"rewire step  median {r * 1e3:8.1f} ms  (min {min(t_rewire) * 1e3:.1f})")
    print(f"mask enforcement alone (weights + momentum, 11.2 M masked weights): {statistics.median(enforce_times) * 1e3:.1f} ms")

    for name, interval in (("flying_bird", 900), ("rigl", 100)):
        model = copy.deepcopy(sparse)
        opt = _sgd(model)
        h = _hooks(name, model, opt, update_every=1, total_steps=never)
        times = []
        for i in range(args.updates):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            t0 = _CLOCK[0]()
            h.after_backward(i)
            h.after_step(i)  # enforcement + one update (update_every = 1)
            times.append(_CLOCK[0]() - t0)
        u = statistics.median(times)
        print(f"{name:12s} one topology update {u * 1e3:8.1f} ms = {u / d:.3f} training steps; "
              f"amortised over {interval} steps: {u / interval * 1e3:.2f} ms/step = {u / interval / d:.5f} of a step")
    print(f"ratio: {ratio:.3f} (rewire step / dense step, median of paired ratios)")


if __name__ == "__main__":
    main()
