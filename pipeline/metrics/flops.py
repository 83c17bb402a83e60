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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from pipeline.engine.section import Section

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


@dataclass
class InferenceFlops(Section):
    """Per-image inference cost of a stage's model at its masks (`at`: which masks, when not the final ones)."""

    dense_flops: float
    sparse_flops: float
    ratio: float
    per_image: bool = True
    at: str | None = None

    @classmethod
    def of(cls, model: nn.Module, input_shape: tuple[int, ...], densities: Mapping[str, float] | None,
           at: str | None = None) -> InferenceFlops:
        final = inference_flops(count_macs(model, input_shape), densities)
        return cls(final["dense_flops"], final["sparse_flops"], final["ratio"], at=at)


@dataclass
class TrainingFlops(Section):
    """What a stage's training cost, from its TrainingFlopsMeter (summed over runs for a multi-run stage)."""

    paper: float
    corrected: float
    images: int
    steps: int
    mode: Mode
    attack_steps: int
    paper_at_final_density: float | None = None
    dense_equivalent_paper: float | None = None
    rounds_trained: int | None = None
    note: str | None = None

    @classmethod
    def total(cls, runs: Sequence[TrainingFlops], note: str) -> TrainingFlops:
        """The cost of several training runs of one stage (IMP rounds): counts summed, mode of the first."""
        return cls(paper=sum(r.paper for r in runs), corrected=sum(r.corrected for r in runs),
                   images=sum(r.images for r in runs), steps=sum(r.steps for r in runs), mode=runs[0].mode,
                   attack_steps=runs[0].attack_steps, rounds_trained=len(runs), note=note)


@dataclass
class FlopsRecord(Section):
    """stage.json `flops`: inference cost of the stage's model, training cost of the stage, the convention."""

    SECTION: ClassVar[str] = "flops"
    NESTED: ClassVar[dict] = {"inference": InferenceFlops, "training": TrainingFlops}

    inference: InferenceFlops | None = None
    training: TrainingFlops | None = None
    convention: str = FLOPS_CONVENTION


def _steps(mode: Mode, attack_steps: int | None) -> int:
    if mode not in _DEFAULT_STEPS:
        raise ValueError(f"mode must be one of {list(_DEFAULT_STEPS)}, got {mode!r}")
    if attack_steps is None:
        return _DEFAULT_STEPS[mode]
    if (mode == "clean" and attack_steps != 0) or (mode == "fast" and attack_steps != 1) or attack_steps < 0 \
            or (mode == "pgd" and attack_steps < 1):
        raise ValueError(f"attack_steps={attack_steps} does not fit mode {mode!r} (clean: 0, fast: 1, pgd: >= 1)")
    return attack_steps


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

    def record(self, final: Mapping[str, Any]) -> TrainingFlops:
        """The stage.json figures of this meter; `final` is inference_flops() at the final masks."""
        k = self.attack_steps
        return TrainingFlops(paper=self.paper, corrected=self.corrected, images=self.images, steps=self.steps,
                             mode=self.mode, attack_steps=k,
                             paper_at_final_density=(k + 1) * 3 * self.images * final["sparse_flops"],
                             dense_equivalent_paper=(k + 1) * 3 * self.images * final["dense_flops"])
