"""Check that an exported ONNX model computes what the torch model computes, on real inputs."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exports.ort_runtime import make_session
from pipeline.engine.errors import StageFailed


class ParityError(StageFailed):
    """onnxruntime and torch disagree by more than the tolerance."""


def check_parity(onnx_path: str | Path, model: nn.Module, inputs: torch.Tensor, *, tol: float = 1e-4,
                 batch_size: int = 64) -> dict:
    """Largest |logit difference| between onnxruntime (CPU) and torch (eval, CPU, fp32) over `inputs`.

    Returns {"max_abs_diff", "n", "tol", "passed"}; a NaN or inf anywhere fails the check.
    """
    if inputs.ndim != 4 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty (N, C, H, W) batch, got shape {tuple(inputs.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    net = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    session = make_session(onnx_path, "cpu", intra_op_threads=1)
    input_name = session.get_inputs()[0].name
    x_all = inputs.detach().to(device="cpu", dtype=torch.float32)

    max_diff = 0.0
    with torch.inference_mode():
        for start in range(0, x_all.shape[0], batch_size):
            x = x_all[start:start + batch_size]
            expected = net(x).numpy()
            got = session.run(None, {input_name: np.ascontiguousarray(x.numpy())})[0]
            if got.shape != expected.shape:
                raise ParityError(f"{onnx_path}: onnxruntime output shape {got.shape} != torch {expected.shape}")
            diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
            if not np.isfinite(diff).all():
                max_diff = float("nan")  # compares False with any tol, so the check fails
                break
            max_diff = max(max_diff, float(diff.max()))
    return {"max_abs_diff": max_diff, "n": int(x_all.shape[0]), "tol": tol, "passed": bool(max_diff <= tol)}


def assert_parity(onnx_path: str | Path, model: nn.Module, inputs: torch.Tensor, *, tol: float = 1e-4,
                  batch_size: int = 64) -> dict:
    """`check_parity`, raising ParityError with the measured difference when it fails."""
    result = check_parity(onnx_path, model, inputs, tol=tol, batch_size=batch_size)
    if not result["passed"]:
        raise ParityError(f"ONNX parity failed for {onnx_path}: max |onnxruntime - torch| = "
                          f"{result['max_abs_diff']:.3g} > tol {tol:g} over {result['n']} inputs")
    return result
