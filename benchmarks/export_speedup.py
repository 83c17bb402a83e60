"""onnxruntime speedup of channel-pruned PreActResNet-18 against the dense network, next to the MACs cut.

PreActResNet-18 (10 classes, 32x32) is channel-pruned with the `channel_prune` machinery
(pipeline.models.channel_plan: torch-pruning groups, L2 importance, kept widths a multiple of
--round-to) to 2x, 4x and 8x fewer MACs, each network exported to ONNX, and all of them timed on the
onnxruntime CPU provider with fixed threads, in one process, in alternating rounds (dense, masked80,
2x, 4x, 8x, dense, ...), at batch 64 (throughput) and batch 1 (latency). `masked80` is the dense graph
with 80% unstructured zeros: what an unstructured ticket costs in onnxruntime. Timing weights do not matter, so the
networks are freshly initialised. By default the clock is the thread's CPU time (`--clock cpu`): with
one intra-op thread onnxruntime computes on the calling thread, and on a shared machine wall time
mostly measures the neighbours.

    python benchmarks/export_speedup.py --threads 1
The last line printed is `speedup/macs_cut at 4x: batch 64 X.XX, batch 1 Y.YY`
(targets: >= 0.85 at batch 64, >= 0.7 at batch 1).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from exports.onnx_export import export_onnx, graph_stats
from exports.ort_runtime import cpu_model, make_session
from pipeline.models import create_model
from pipeline.models.channel_plan import plan_groups, prune_to_target
from pipeline.models.structure import dependency_graph

SHAPE = (3, 32, 32)
CUTS = (2, 4, 8)


def pruned(cut: int, scope: str, round_to: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("preact_resnet18", num_classes=10, in_chans=3).eval()
    if cut == 1:
        return model
    if cut == 0:  # 80% unstructured zeros (global magnitude over conv weights), the graph left dense
        convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        threshold = torch.cat([w.detach().abs().flatten() for w in convs]).kthvalue(int(0.8 * sum(w.numel() for w in convs))).values
        with torch.no_grad():
            for w in convs:
                w[w.abs() <= threshold] = 0
        return model
    graph = dependency_graph(model, SHAPE)
    sizes = {g.name: g.size for g in plan_groups(model, graph)}
    dense = graph_macs(model)
    prune_to_target(model, graph, SHAPE, target_macs=int(dense / cut), scope=scope, importance="l2",
                    min_keep=0.05, original_sizes=sizes, round_to=round_to)
    return model


def graph_macs(model) -> int:
    from pipeline.metrics.flops import count_macs

    return sum(lm.macs for lm in count_macs(model, SHAPE))


def timed(session, x, runs: int, clock) -> list[float]:
    feed = {session.get_inputs()[0].name: x}
    out = []
    for _ in range(runs):
        start = clock()
        session.run(None, feed)
        out.append((clock() - start) / 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (fixed)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds over all networks")
    parser.add_argument("--runs64", type=int, default=2, help="timed batch-64 runs per network and round")
    parser.add_argument("--runs1", type=int, default=20, help="timed batch-1 runs per network and round")
    parser.add_argument("--scope", choices=["per_layer", "global"], default="per_layer")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args()
    clock = time.thread_time_ns if args.clock == "cpu" else time.perf_counter_ns
    print(f"onnxruntime {ort.__version__} CPU, {args.threads} intra-op thread(s), {cpu_model()}, "
          f"{platform.platform()}; clock: {args.clock}")

    tmp = Path(tempfile.mkdtemp(prefix="export_speedup."))
    nets, stats = {}, {}
    for cut in (1, 0, *CUTS):
        name = "dense" if cut == 1 else "masked80" if cut == 0 else f"{cut}x"
        path = tmp / f"{name}.onnx"
        export_onnx(pruned(cut, args.scope, args.round_to), path, input_shape=SHAPE, metadata={"variant": name})
        stats[name] = graph_stats(path)
        nets[name] = make_session(path, "cpu", intra_op_threads=args.threads)
    rng = np.random.default_rng(0)
    inputs = {64: rng.random((64, *SHAPE), dtype=np.float32), 1: rng.random((1, *SHAPE), dtype=np.float32)}
    times = {n: {64: [], 1: []} for n in nets}
    for session in nets.values():  # warm-up of each shape, untimed
        for x in inputs.values():
            timed(session, x, 2, clock)
    for _ in range(args.rounds):
        for batch, runs in ((64, args.runs64), (1, args.runs1)):
            for name, session in nets.items():
                times[name][batch] += timed(session, inputs[batch], runs, clock)
    med = {n: {b: statistics.median(t) for b, t in per.items()} for n, per in times.items()}
    print(f"{'network':<8} {'MB':>7} {'params':>10} {'MMACs':>8} {'macs_cut':>8} "
          f"{'b64 ms':>9} {'b64 speedup':>11} {'ratio':>6} {'b1 ms':>7} {'b1 speedup':>10} {'ratio':>6}")
    ratios = {}
    for name in nets:
        cut = stats["dense"]["macs"] / stats[name]["macs"]
        s64, s1 = med["dense"][64] / med[name][64], med["dense"][1] / med[name][1]
        ratios[name] = (s64 / cut, s1 / cut)
        print(f"{name:<8} {stats[name]['bytes'] / 1e6:7.2f} {stats[name]['params']:>10,} "
              f"{stats[name]['macs'] / 1e6:8.1f} {cut:8.2f} {med[name][64]:9.2f} {s64:10.2f}x {s64 / cut:6.2f} "
              f"{med[name][1]:7.2f} {s1:9.2f}x {s1 / cut:6.2f}")
    r64, r1 = ratios["4x"]
    print(f"speedup/macs_cut at 4x: batch 64 {r64:.2f}, batch 1 {r1:.2f}")


if __name__ == "__main__":
    main()
