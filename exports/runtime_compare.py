"""Several ONNX models of one network timed side by side: the dense baseline and each compressed variant.

All sessions are built first with identical settings, then timed in alternating rounds (model A, B, C,
A, B, C, ...) so that a frequency change or a noisy neighbour hits every model alike instead of
whichever happened to run last. Peak resident memory of a session is what the process's high-water
mark rises by while the session is created and warmed up (Linux: VmHWM, reset through clear_refs).
`clock="cpu"` (CPU provider, one intra-op thread) times the calling thread's CPU time instead of wall
time: with one thread onnxruntime computes on the caller, and on a shared machine wall time mostly
measures the neighbours.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from exports.ort_runtime import _stats, _time_cpu, _time_cuda, make_session


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False



def compare_models(paths: Mapping[str, str | Path], provider: str, *, input_shape: Sequence[int],
                   batch_sizes: Sequence[int] = (1, 64), warmup: int = 10, runs: int = 100, rounds: int = 5,
                   intra_op_threads: int = 1, seed: int = 0, device_id: int = 0,
                   clock: str = "wall") -> dict[str, dict]:
    """Per model name: {"per_batch": {batch: latency stats}, "peak_rss_mb"}; `runs` per batch size and model,
    split over `rounds` alternating rounds."""
    if runs < rounds:
        raise ValueError(f"runs ({runs}) must be >= rounds ({rounds})")
    if clock == "cpu" and (provider != "cpu" or intra_op_threads != 1):
        raise ValueError("clock 'cpu' measures the calling thread: only for the CPU provider with 1 intra-op thread")
    rng = np.random.default_rng(seed)
    inputs = {b: rng.random((int(b), *input_shape), dtype=np.float32) for b in batch_sizes}
    sessions, peak = {}, {}
    time_fn = _time_cuda if provider == "cuda" else \
        functools.partial(_time_cpu, clock=time.thread_time_ns) if clock == "cpu" else _time_cpu
    extra = (device_id,) if provider == "cuda" else ()
    for name, path in paths.items():
        before = _status_kb("VmRSS")
        can_reset = _reset_peak()
        sessions[name] = make_session(path, provider, intra_op_threads=intra_op_threads)
        for b in batch_sizes:  # each shape warmed up on its own: a new shape re-selects kernels
            time_fn(sessions[name], inputs[b], warmup, 1, *extra)
        after = _status_kb("VmHWM")
        peak[name] = (after - before) / 1024 if can_reset and before is not None and after is not None else None
    times: dict[str, dict[int, list]] = {n: {b: [] for b in batch_sizes} for n in paths}
    per_round = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    for n_runs in per_round:
        for b in batch_sizes:
            for name, session in sessions.items():
                times[name][b].append(time_fn(session, inputs[b], 0, n_runs, *extra))
    return {name: {"per_batch": {str(b): _stats(np.concatenate(t), int(b)) for b, t in times[name].items()},
                   "peak_rss_mb": peak[name]} for name in paths}


def summary_lines(comparison: dict | None) -> list[str]:
    """What the compression bought, one line per variant against the dense baseline (CPU figures)."""
    if not comparison or not comparison.get("rows"):
        return []
    rows = [r for r in comparison["rows"] if r["provider"] == "cpu"]
    dense = next((r for r in rows if r["variant"] == "dense"), None)
    if dense is None:
        return []
    big = str(comparison.get("throughput_batch"))
    out = [f"    compression vs dense ({dense['bytes'] / 1e6:.2f} MB, {dense['macs'] / 1e6:.2f} M MACs, "
           f"batch-1 {dense['b1_median_ms']:.3f} ms; cpu):"]
    for r in rows:
        if r["variant"] == "dense":
            continue
        b1 = f"batch-1 {r['b1_median_ms']:.3f} ms ({r['speedup'].get('1', float('nan')):.2f}x), " \
            if r.get("b1_median_ms") is not None else ""
        out.append(f"      {r['variant']:<19} {r['bytes'] / 1e6:.2f} MB ({r['size_ratio']:.2f}x smaller), "
                   f"{r['macs'] / 1e6:.2f} M MACs ({r['macs_cut']:.2f}x fewer), {b1}"
                   f"batch {big} {r['speedup'][big]:.2f}x faster")
    return out
