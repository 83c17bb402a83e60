"""FLOPs accounting from the real graph and the real masks (spec §5).

Conventions:
- A MAC is one multiply-accumulate of a weight with an input; FLOPs = 2 x MACs.
- Only Conv2d and Linear weights are counted (per image): Conv2d = output elements x in_channels/groups
  x k_h x k_w, Linear = output elements x in_features. Bias additions are reported per layer
  (`bias_adds`) but left out of the totals, as are BN, activations, pooling and residual adds; this is
  the usual thop-style convention and keeps sparse/dense ratios about the weights the masks act on.
- Sparse inference cost = sum over layers of density_l x MACs_l (only non-zero weights do work).
- Training (per image, F = forward FLOPs): the "paper-compatible" number charges every pass 3F,
  i.e. (attack_steps + 1) x 3F (33F for PGD-10, 3F clean), which reproduces the published table. The
  corrected number charges the weight update 3F (forward, input gradient, weight gradient) and each
  attack step 2F (forward and input gradient only).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

Mode = Literal["pgd", "fast", "clean"]
_DEFAULT_STEPS = {"pgd": 10, "fast": 1, "clean": 0}


@dataclass(frozen=True)
class LayerMacs:
    """Per-image cost of one Conv2d/Linear module (summed over its calls if it runs more than once)."""

    module: str  # qualified module name
    param: str  # name of its weight in model.named_parameters(), to join with masks
    kind: str  # "conv" or "linear"
    macs: int
    bias_adds: int
    weights: int  # number of weight entries


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> list[LayerMacs]:
    """Run one zero image of `input_shape` (C, H, W) through `model` in eval mode and count the MACs of
    every Conv2d and Linear call, in execution order. The model's train/eval flags are restored."""
    first = next(model.parameters())
    x = torch.zeros((1, *input_shape), device=first.device, dtype=first.dtype)
    found: dict[str, dict[str, Any]] = {}
    handles = []

    def hook_for(name: str):
        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            per_image = output.numel() // output.shape[0]
            if isinstance(mod, nn.Conv2d):
                kh, kw = mod.kernel_size
                macs, kind = per_image * (mod.in_channels // mod.groups) * kh * kw, "conv"
            else:
                macs, kind = per_image * mod.in_features, "linear"
            entry = found.setdefault(name, {"kind": kind, "macs": 0, "bias_adds": 0, "weights": mod.weight.numel()})
            entry["macs"] += macs
            entry["bias_adds"] += per_image if mod.bias is not None else 0
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(hook_for(name)))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return [LayerMacs(module=n, param=f"{n}.weight" if n else "weight", kind=e["kind"], macs=e["macs"],
                      bias_adds=e["bias_adds"], weights=e["weights"]) for n, e in found.items()]


def inference_flops(layer_macs: list[LayerMacs], densities: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Dense and sparse per-image cost. `densities` maps weight names (as in masks.layer_densities())
    to kept fractions; layers not named count as dense, names matching no layer are an error."""
    densities = dict(densities or {})
    known = {layer.param for layer in layer_macs}
    unknown = sorted(set(densities) - known)
    if unknown:
        raise ValueError(f"densities name layers that were not counted: {unknown}")
    per_layer = {}
    dense = sparse = 0
    for layer in layer_macs:
        d = float(densities.get(layer.param, 1.0))
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"density of {layer.param!r} must be in [0, 1], got {d}")
        per_layer[layer.param] = {"macs": layer.macs, "density": d, "sparse_macs": d * layer.macs}
        dense += layer.macs
        sparse += d * layer.macs
    return {"dense_macs": dense, "sparse_macs": sparse, "dense_flops": 2 * dense, "sparse_flops": 2 * sparse,
            "ratio": sparse / dense if dense else 1.0, "layers": per_layer}


FLOPS_CONVENTION = ("FLOPs = 2 x MACs of conv/linear weights; paper: (attack_steps+1) x 3F per image; "
                    "corrected: 3F per update + 2F per attack step (see pipeline/metrics/flops.py)")


def inference_record(model: nn.Module, input_shape: tuple[int, ...], densities: Mapping[str, float] | None,
                     **extra: Any) -> dict[str, Any]:
    """stage.json `flops.inference` for `model` at `densities` (None: dense), per image."""
    final = inference_flops(count_macs(model, input_shape), densities)
    return {"dense_flops": final["dense_flops"], "sparse_flops": final["sparse_flops"], "ratio": final["ratio"],
            "per_image": True, **extra}


def _steps(mode: Mode, attack_steps: int | None) -> int:
    if mode not in _DEFAULT_STEPS:
        raise ValueError(f"mode must be one of {list(_DEFAULT_STEPS)}, got {mode!r}")
    if attack_steps is None:
        return _DEFAULT_STEPS[mode]
    if (mode == "clean" and attack_steps != 0) or (mode == "fast" and attack_steps != 1) or attack_steps < 0 \
            or (mode == "pgd" and attack_steps < 1):
        raise ValueError(f"attack_steps={attack_steps} does not fit mode {mode!r} (clean: 0, fast: 1, pgd: >= 1)")
    return attack_steps


def training_flops(f_inf: float, n_images: int, epochs: float, attack_steps: int | None = None, *,
                   mode: Mode = "pgd") -> dict[str, float]:
    """Training FLOPs at a fixed per-image forward cost `f_inf` (attack_steps default: pgd 10, fast 1, clean 0).

    paper: (attack_steps + 1) x 3 x N x E x F (33 N E F for PGD-10, 3 N E F clean, 6 N E F fast AT).
    corrected: (3 + 2 x attack_steps) x N x E x F.
    """
    steps = _steps(mode, attack_steps)
    work = n_images * epochs * f_inf
    return {"paper": (steps + 1) * 3 * work, "corrected": (3 + 2 * steps) * work,
            "paper_factor": (steps + 1) * 3, "corrected_factor": 3 + 2 * steps}


class TrainingFlopsMeter:
    """Accumulates training FLOPs step by step over a changing density trajectory (dynamic sparsity).

    Call `accumulate(step_images, f_sparse)` once per optimizer step with the current per-image forward
    FLOPs. At a step that computes a dense weight gradient (e.g. RigL-style growth) pass
    `f_dense_grad` = that gradient's per-image FLOPs; it replaces the sparse weight-gradient term in the
    corrected count. The paper-compatible count ignores it, as the published table did.
    """

    def __init__(self, mode: Mode = "pgd", attack_steps: int | None = None):
        self.mode = mode
        self.attack_steps = _steps(mode, attack_steps)
        self.paper: float = 0
        self.corrected: float = 0
        self.images = 0
        self.steps = 0

    def accumulate(self, step_images: int, f_sparse: float, f_dense_grad: float | None = None) -> None:
        k = self.attack_steps
        self.paper += (k + 1) * 3 * f_sparse * step_images
        weight_grad = f_sparse if f_dense_grad is None else f_dense_grad
        self.corrected += ((2 + 2 * k) * f_sparse + weight_grad) * step_images
        self.images += step_images
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "attack_steps": self.attack_steps, "paper": self.paper,
                "corrected": self.corrected, "images": self.images, "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["mode"] != self.mode or state["attack_steps"] != self.attack_steps:
            raise ValueError(f"FLOPs meter state is for mode={state['mode']!r}, attack_steps={state['attack_steps']}; "
                             f"this meter has mode={self.mode!r}, attack_steps={self.attack_steps}")
        self.paper, self.corrected = state["paper"], state["corrected"]
        self.images, self.steps = state["images"], state["steps"]
