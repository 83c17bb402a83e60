"""AutoAttack (Croce & Hein, ICML 2020) as an optional evaluation attack, imported lazily.

AutoAttack is not a dependency of the pipeline. The reference code installs from git:

    pip install git+https://github.com/fra31/auto-attack          # import name: autoattack

`pyautoattack` on PyPI (0.2.0) is an unofficial repackaging of the same code with a changed call
signature (keyword-only arguments, `batch_size=`, returns `(x_adv, y_adv)`); both are accepted.
Robust accuracy is recomputed here from the returned adversarial images, after checking that
they stay within the eps ball and in [0, 1].
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.engine import distributed
from pipeline.engine.errors import PipelineError, StageFailed
from pipeline.engine.seeding import derive_seed
from pipeline.metrics.autoattack_config import (  # noqa: F401  (moved; the old names stay importable)
    BACKENDS, INSTALL_HINT, AutoAttackConfig, Split, find_autoattack, missing_message)


def _accepts(fn, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


@contextmanager
def _isolated_rng(device: torch.device):
    # AutoAttack seeds the global generators itself; keep the caller's streams untouched
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def _budget_exceeded(x_adv: Tensor, x: Tensor, norm: str, eps: float) -> float | None:
    delta = (x_adv - x).flatten(1)
    size = {"Linf": delta.abs().amax(1), "L2": delta.norm(p=2, dim=1), "L1": delta.abs().sum(1)}[norm]
    worst = float(size.max()) if size.numel() else 0.0
    out_of_range = bool(((x_adv < 0) | (x_adv > 1)).any())
    return worst if worst > eps * (1 + 1e-4) + 1e-6 or out_of_range else None


def run_autoattack(model: nn.Module, x: Tensor, y: Tensor, cfg: AutoAttackConfig, *, device: torch.device | str,
                   seed: int, batch_size: int) -> dict[str, Any]:
    """Robust accuracy (%) of `model` (eval mode) under AutoAttack on (N, C, H, W) uint8 or [0, 1] images."""
    found = find_autoattack(cfg.backend)
    if found is None:
        raise PipelineError(missing_message(cfg))
    cls, backend = found
    from pipeline.engine.console import _ACTIVE

    if _ACTIVE:  # AutoAttack has no progress hook of its own: at least say that minutes may pass
        _ACTIVE[-1].info(f"  AutoAttack {cfg.version} ({backend}) on {len(y)} images: this can take minutes")
    device = torch.device(device)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = x.to(device)
    x = x.to(dtype).div(255.0) if x.dtype == torch.uint8 else x.to(dtype)
    y = y.to(device).long()
    n = int(x.shape[0])
    if distributed.active():  # each rank attacks its contiguous share; the counts are summed below
        start, stop = distributed.shard(n)
        x, y = x[start:stop], y[start:stop]
        seed = seed if distributed.rank() == 0 else derive_seed(seed, "autoattack-rank", distributed.rank())
    clean = robust = 0

    if x.shape[0]:  # under torchrun a rank may have no share (more ranks than images)
        clean, robust = _attack_and_count(model, x, y, cfg, cls, backend, device, seed, batch_size)
    if distributed.active():
        counts = distributed.all_reduce_sum(torch.tensor([clean, robust], dtype=torch.float64, device=device))
        clean, robust = int(counts[0]), int(counts[1])
    return {"acc": 100.0 * robust / n, "clean_acc": 100.0 * clean / n, "n": n, "backend": backend}


def _attack_and_count(model, x, y, cfg, cls, backend, device, seed, batch_size) -> tuple[int, int]:
    """(clean, robust) correct counts of `model` on (x, y) under AutoAttack, modes restored."""
    clean = robust = 0
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with _isolated_rng(device):
            kwargs = {"norm": cfg.norm, "eps": float(cfg.eps), "version": cfg.version, "device": str(device),
                      "seed": int(seed), "verbose": False}
            adversary = cls(model, **{k: v for k, v in kwargs.items() if _accepts(cls.__init__, k)})
            run = adversary.run_standard_evaluation
            bs_key = "bs" if _accepts(run, "bs") and "batch_size" not in inspect.signature(run).parameters else "batch_size"
            out = run(x, y, **{bs_key: int(batch_size)})
        x_adv = (out[0] if isinstance(out, (tuple, list)) else out).to(device, x.dtype)
        if x_adv.shape != x.shape:
            raise StageFailed(f"AutoAttack ({backend}) returned images of shape {tuple(x_adv.shape)} for {tuple(x.shape)}")
        worst = _budget_exceeded(x_adv, x, cfg.norm, float(cfg.eps))
        if worst is not None:
            raise StageFailed(f"AutoAttack ({backend}) returned images outside the {cfg.norm} ball of {cfg.eps:.6g} "
                              f"or outside [0, 1] (largest perturbation {worst:.6g}); its figure would be wrong")
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                sl = slice(start, start + batch_size)
                clean += int((model(x[sl]).argmax(1) == y[sl]).sum())
                robust += int((model(x_adv[sl]).argmax(1) == y[sl]).sum())
    finally:
        for m, training in modes.items():
            m.training = training
    return clean, robust
