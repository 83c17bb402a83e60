"""Training throughput of the pipeline's DDP path for 1..N processes (not a test).

Each configuration spawns N processes that join a process group (gloo on CPU, nccl on GPU), wrap a
model with `pipeline.train.ddp.DistributedTraining` (DDP, global BatchNorm, weighted gradient
all-reduce) and time `adversarial_train_step` on a fixed global batch of random CIFAR-shaped images,
each rank training on its share, exactly as `pipeline run` under torchrun does. Samples per second
count global-batch images; scaling efficiency = samples/s(N) / (N x samples/s(1)).

    python benchmarks/ddp_scaling.py                    # CPU: 1 and 2 processes (gloo)
    python benchmarks/ddp_scaling.py --gpus 1,2,4,8     # GPUs when present (nccl)
    python benchmarks/ddp_scaling.py --arch preact_resnet18 --mode pgd --steps 20
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args, device_type: str, out_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(args.threads)
    from pipeline.engine import distributed
    from pipeline.engine.config import DistributedSection
    from pipeline.metrics.attacks import AttackConfig, make_train_attack
    from pipeline.models.registry import create_model
    from pipeline.train.ddp import DistributedTraining
    from pipeline.train.step import adversarial_train_step

    device = distributed.init(DistributedSection(), torch.device(device_type))
    torch.manual_seed(0)
    model = create_model(args.arch, num_classes=10, in_chans=3).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n_train = args.batch_size * (args.steps + args.warmup)
    dtrain = DistributedTraining(model, device, DistributedSection(), batch_size=args.batch_size,
                                 n_train=n_train, drop_last=True, where="benchmark")
    kind = {"clean": "none", "fast": "fgsm_rs", "pgd": "pgd"}[args.mode]
    attack = dtrain.attack(make_train_attack(AttackConfig(kind=kind, steps=args.attack_steps)))
    start, stop = distributed.shard(args.batch_size, rank, world)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch_size, 3, 32, 32, generator=gen)[start:stop].to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen)[start:stop].to(device)
    g = torch.Generator(device=device)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            distributed.barrier()
            t0 = time.perf_counter()
        dtrain.begin_step(i, int(y.shape[0]))
        g.manual_seed(i)
        adversarial_train_step(dtrain.forward_model, opt, x, y, attack=attack, generator=g)
    if device.type == "cuda":
        torch.cuda.synchronize()
    distributed.barrier()
    seconds = time.perf_counter() - t0
    if rank == 0:
        Path(out_dir, "seconds").write_text(repr(seconds))
    dtrain.close()
    distributed.shutdown()


def measure(world: int, device_type: str, args) -> float:
    with tempfile.TemporaryDirectory() as out:
        # world 1: WORLD_SIZE=1 takes the single-process path (no process group), as `pipeline run` does
        mp.start_processes(_worker, args=(world, _free_port(), args, device_type, out), nprocs=world,
                           start_method="spawn")
        seconds = float(Path(out, "seconds").read_text())
    return args.batch_size * args.steps / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="small_cnn")
    p.add_argument("--mode", choices=["clean", "fast", "pgd"], default="clean")
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128, help="global batch (divided across processes)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per CPU process")
    p.add_argument("--cpu-procs", default="1,2")
    p.add_argument("--gpus", default="auto", help="GPU counts to try, e.g. 1,2,4 (auto: 1..all visible; none: skip)")
    args = p.parse_args()

    rows = []
    for n in [int(v) for v in args.cpu_procs.split(",") if v]:
        rows.append(("cpu/gloo", n, measure(n, "cpu", args)))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and args.gpus != "none":
        counts = range(1, gpus + 1) if args.gpus == "auto" else [int(v) for v in args.gpus.split(",")]
        for n in counts:
            if n <= gpus:
                rows.append(("cuda/nccl", n, measure(n, "cuda", args)))
    print(f"arch {args.arch}, mode {args.mode}, global batch {args.batch_size}, {args.steps} timed steps, "
          f"{args.threads} thread(s) per CPU process")
    for kind, n, sps in rows:
        print(f"  {kind:<10} {n} process(es): {sps:9.1f} samples/s")
    last = []
    for kind in dict.fromkeys(k for k, _, _ in rows):
        one = next((s for k, n, s in rows if k == kind and n == 1), None)
        top_n, top = max(((n, s) for k, n, s in rows if k == kind), key=lambda r: r[0])
        if one and top_n > 1:
            last.append(f"{kind} {top_n} vs 1: {top / (top_n * one):.1%}")
    print("scaling efficiency: " + ("; ".join(last) if last else "n/a (one configuration only)"))


if __name__ == "__main__":
    main()
