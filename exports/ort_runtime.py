"""onnxruntime sessions built the same way every time, and a latency benchmark that times only inference.

Measurement rules (landscape §B5): providers are named explicitly, threads are fixed, execution is
sequential, warm-up runs and session creation are never timed, every batch size is warmed up on its
own (a new shape re-triggers kernel selection), and on CUDA inputs and outputs stay on the device
through IOBinding so host<->device copies are not what gets measured.
"""
from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from pipeline.engine.errors import PipelineError

# Short names users type (`--provider cuda`) -> onnxruntime execution provider names.
PROVIDER_NAMES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "azure": "AzureExecutionProvider",
}
_SHORT_NAMES = {long: short for short, long in PROVIDER_NAMES.items()}

GRAPH_OPTIMIZATION: dict[str, ort.GraphOptimizationLevel] = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
CUDNN_CONV_ALGO_SEARCH = ("HEURISTIC", "EXHAUSTIVE", "DEFAULT")


class ProviderMissing(PipelineError):
    """The requested execution provider is unknown or not available in this onnxruntime build."""

    exit_code = 2


def short_provider_name(ort_name: str) -> str:
    """'CUDAExecutionProvider' -> 'cuda'; providers not in PROVIDER_NAMES are lower-cased without the suffix."""
    if ort_name in _SHORT_NAMES:
        return _SHORT_NAMES[ort_name]
    return ort_name.removesuffix("ExecutionProvider").lower()


def available_providers() -> list[str]:
    """Short names of the execution providers this onnxruntime build offers, in ORT's priority order."""
    return [short_provider_name(name) for name in ort.get_available_providers()]


def _resolve_provider(provider: str) -> str:
    if provider not in PROVIDER_NAMES:
        raise ProviderMissing(f"unknown execution provider {provider!r}; known: {sorted(PROVIDER_NAMES)}")
    available = available_providers()
    if provider not in available:
        hint = " (install onnxruntime-gpu for 'cuda')" if provider == "cuda" else ""
        raise ProviderMissing(f"execution provider {provider!r} is not available in onnxruntime "
                              f"{ort.__version__}; available: {available}{hint}")
    return PROVIDER_NAMES[provider]


def _provider_list(provider: str, cudnn_conv_algo_search: str, device_id: int) -> list:
    ort_name = _resolve_provider(provider)
    if provider == "cuda":
        # HEURISTIC instead of ORT's EXHAUSTIVE default: exhaustive cuDNN search makes the first runs
        # of every new shape take seconds (onnxruntime#19838), which warm-up would then have to absorb.
        options = {"device_id": str(device_id), "cudnn_conv_algo_search": cudnn_conv_algo_search}
        return [(ort_name, options), "CPUExecutionProvider"]
    if provider == "cpu":
        return [ort_name]
    return [ort_name, "CPUExecutionProvider"]


def make_session(path: str | Path, provider: str, *, intra_op_threads: int, inter_op_threads: int = 1,
                 graph_optimization: Literal["all", "extended", "basic", "none"] = "all",
                 cudnn_conv_algo_search: str = "HEURISTIC", device_id: int = 0) -> ort.InferenceSession:
    """An InferenceSession on exactly `provider` with sequential execution and fixed thread counts.

    `intra_op_threads=0` leaves the choice to onnxruntime (all cores); benchmarks should pass a number.
    """
    if intra_op_threads < 0 or inter_op_threads < 0:
        raise ValueError(f"thread counts must be >= 0, got intra_op_threads={intra_op_threads}, "
                         f"inter_op_threads={inter_op_threads}")
    if graph_optimization not in GRAPH_OPTIMIZATION:
        raise ValueError(f"graph_optimization must be one of {sorted(GRAPH_OPTIMIZATION)}, "
                         f"got {graph_optimization!r}")
    if cudnn_conv_algo_search not in CUDNN_CONV_ALGO_SEARCH:
        raise ValueError(f"cudnn_conv_algo_search must be one of {CUDNN_CONV_ALGO_SEARCH}, "
                         f"got {cudnn_conv_algo_search!r}")
    providers = _provider_list(provider, cudnn_conv_algo_search, device_id)
    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")

    options = ort.SessionOptions()
    options.graph_optimization_level = GRAPH_OPTIMIZATION[graph_optimization]
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    # ORT falls back to CPU with only a warning when e.g. the CUDA libraries fail to load;
    # a "cuda" number measured on the CPU would be a lie, so refuse it.
    if session.get_providers()[0] != PROVIDER_NAMES[provider]:
        raise ProviderMissing(f"onnxruntime could not start {PROVIDER_NAMES[provider]} for {path}; "
                              f"session runs on {session.get_providers()}")
    return session


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _gpu_name(device_id: int) -> str | None:
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(device_id)
    except Exception:  # only a label for the report; never fail a benchmark over it
        pass
    return None


def _stats(times_ms: np.ndarray, batch_size: int) -> dict[str, float | int]:
    median = float(np.median(times_ms))
    return {
        "batch_size": batch_size,
        "median_ms": median,
        "p90_ms": float(np.percentile(times_ms, 90)),
        "p99_ms": float(np.percentile(times_ms, 99)),
        "mean_ms": float(times_ms.mean()),
        "min_ms": float(times_ms.min()),
        "max_ms": float(times_ms.max()),
        "throughput_img_s": batch_size / (median / 1000.0) if median > 0 else float("inf"),
        "runs": int(times_ms.size),
    }


def _time_cpu(session: ort.InferenceSession, x: np.ndarray, warmup: int, runs: int,
              clock=time.perf_counter_ns) -> np.ndarray:
    """Per-run milliseconds; `clock=time.thread_time_ns` counts the calling thread's CPU time, which a
    busy machine disturbs far less than wall time (meaningful with one intra-op thread only)."""
    feed = {session.get_inputs()[0].name: x}
    outputs = [session.get_outputs()[0].name]
    for _ in range(warmup):
        session.run(outputs, feed)
    times = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        start = clock()
        session.run(outputs, feed)
        times[i] = (clock() - start) / 1e6
    return times


def _time_cuda(session: ort.InferenceSession, x: np.ndarray, warmup: int, runs: int,
               device_id: int) -> np.ndarray:
    out_meta = session.get_outputs()[0]
    binding = session.io_binding()
    x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", device_id)
    binding.bind_ortvalue_input(session.get_inputs()[0].name, x_dev)
    tail = out_meta.shape[1:]
    if all(isinstance(d, int) for d in tail):
        # A preallocated device buffer: no allocation inside the timed region.
        y_dev = ort.OrtValue.ortvalue_from_shape_and_type([x.shape[0], *tail], np.float32, "cuda", device_id)
        binding.bind_ortvalue_output(out_meta.name, y_dev)
    else:
        binding.bind_output(out_meta.name, "cuda", device_id)
    binding.synchronize_inputs()
    for _ in range(warmup):
        session.run_with_iobinding(binding)
    binding.synchronize_outputs()
    times = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        start = time.perf_counter_ns()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the kernels are asynchronous; stop the clock when they are done
        times[i] = (time.perf_counter_ns() - start) / 1e6
    return times


def _session_input_shape(session: ort.InferenceSession, path: str | Path) -> tuple[int, ...]:
    dims = session.get_inputs()[0].shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ValueError(f"{path}: input dims {dims} are not all fixed; pass input_shape")
    return tuple(dims)


def benchmark(path: str | Path, provider: str = "cpu", *, batch_sizes: Sequence[int] = (1, 64),
              warmup: int = 20, runs: int = 100, intra_op_threads: int | None = None,
              inter_op_threads: int = 1, input_shape: Sequence[int] | None = None,
              graph_optimization: Literal["all", "extended", "basic", "none"] = "all",
              cudnn_conv_algo_search: str = "HEURISTIC", device_id: int = 0, seed: int = 0) -> dict:
    """Latency and throughput of the model at `path` on one provider, per batch size.

    `input_shape` is (C, H, W); by default it is read from the model's input. `intra_op_threads`
    defaults to the cores this process may use, and is recorded with everything else that shapes the
    numbers. Inputs are uniform in [0, 1] from `seed`.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    batch_sizes = [int(b) for b in batch_sizes]
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes}")
    threads = _usable_cores() if intra_op_threads is None else intra_op_threads

    session = make_session(path, provider, intra_op_threads=threads, inter_op_threads=inter_op_threads,
                           graph_optimization=graph_optimization,
                           cudnn_conv_algo_search=cudnn_conv_algo_search, device_id=device_id)
    shape = tuple(int(d) for d in input_shape) if input_shape is not None else _session_input_shape(session, path)
    rng = np.random.default_rng(seed)

    per_batch: dict[str, dict] = {}
    for batch in batch_sizes:
        x = rng.random((batch, *shape), dtype=np.float32)
        if provider == "cuda":
            times = _time_cuda(session, x, warmup, runs, device_id)
        else:
            times = _time_cpu(session, x, warmup, runs)
        per_batch[str(batch)] = _stats(times, batch)

    environment = {
        "onnxruntime": ort.__version__,
        "provider": provider,
        "session_providers": session.get_providers(),
        "intra_op_threads": threads,
        "inter_op_threads": inter_op_threads,
        "graph_optimization": graph_optimization,
        "execution_mode": "sequential",
        "cpu": cpu_model(),
        "cpu_cores_usable": _usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if provider == "cuda":
        environment["gpu"] = _gpu_name(device_id)
        environment["device_id"] = device_id
        environment["cudnn_conv_algo_search"] = cudnn_conv_algo_search
        environment["io_binding"] = True
    return {
        "model": str(path),
        "provider": provider,
        "input_shape": list(shape),
        "warmup": warmup,
        "runs": runs,
        "seed": seed,
        "per_batch": per_batch,
        "environment": environment,
    }
