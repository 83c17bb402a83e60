"""Clean (SA) and robust (RA) accuracy of a model, and the SW paper's summary metrics (spec §1.1)."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.metrics.attacks import AttackConfig, advertorch_pgd
from pipeline.engine.errors import DataError, PipelineError


def _as_tensor(a: Any, what: str) -> Tensor:
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    if isinstance(a, Tensor):
        return a
    raise DataError(f"{what}: expected a torch.Tensor or numpy array, got {type(a).__name__}")


def _check_images(x: Tensor, y: Tensor) -> None:
    if x.ndim != 4:
        raise DataError(f"images: expected shape (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        raise DataError(f"images: shape {tuple(x.shape)} looks channels-last (N, H, W, C); "
                        "pass (N, C, H, W)")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"labels: expected shape ({x.shape[0]},), got {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise DataError("images: the evaluation set is empty")


@contextmanager
def _seeded_fork(device: torch.device, seed: int) -> Iterator[None]:
    """Fork (and seed) only the generators the attack draws from, so training's stream is untouched."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index]), torch.cuda.device(index):
            torch.default_generator.manual_seed(seed)
            torch.cuda.manual_seed(seed)  # the current (= this) device only
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield


def evaluate(model: nn.Module, x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, batch_size: int = 256,
             attack: AttackConfig | None = None, device: torch.device | str, limit: int | None = None,
             seed: int = 0) -> dict[str, float | int]:
    """Accuracy (%) and mean CE of `model` in eval mode on (N, C, H, W) images, uint8 or floats in [0, 1].

    With an attack (advertorch PGD; kind 'fgsm_rs' runs it with one step) an example is robust only
    if it is classified correctly after every restart; the loss is on the first restart's examples.
    The attack's random starts are seeded by `seed` in a forked RNG: the global RNG state is the same
    afterwards. The model's train/eval modes (per submodule) are restored. Only the first `limit`
    examples are used when given.
    """
    device = torch.device(device)
    x, y = _as_tensor(x, "images"), _as_tensor(y, "labels")
    _check_images(x, y)
    if limit is not None:
        if limit < 1:
            raise PipelineError(f"limit must be >= 1, got {limit}")
        x, y = x[:limit], y[:limit]
    if batch_size < 1:
        raise PipelineError(f"batch_size must be >= 1, got {batch_size}")
    attacked = attack is not None and attack.kind != "none"
    float_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

    modes = {m: m.training for m in model.modules()}
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    try:
        with _seeded_fork(device, seed), _attack_progress(attack if attacked else None, x.shape[0]) as bar:
            for start in range(0, x.shape[0], batch_size):
                xb = x[start:start + batch_size].to(device, non_blocking=True)
                yb = y[start:start + batch_size].to(device, non_blocking=True).long()
                xb = xb.to(float_dtype).div_(255.0) if xb.dtype == torch.uint8 else xb
                if not attacked:
                    with torch.no_grad():
                        logits = model(xb)
                        correct += (logits.argmax(dim=1) == yb).sum()
                        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").double()
                    continue
                steps = 1 if attack.kind == "fgsm_rs" else attack.steps
                robust = torch.ones_like(yb, dtype=torch.bool)
                for restart in range(attack.restarts):
                    x_adv = advertorch_pgd(model, xb, yb, eps=attack.eps, step=attack.step, steps=steps,
                                           random_start=attack.random_start)
                    with torch.no_grad():
                        logits = model(x_adv)
                        robust &= logits.argmax(dim=1) == yb
                        if restart == 0:
                            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").double()
                correct += robust.sum()
                bar.update(int(yb.shape[0]))
    finally:
        for m, training in modes.items():
            m.training = training
    n = int(x.shape[0])
    return {"acc": 100.0 * correct.item() / n, "loss": loss_sum.item() / n, "n": n}


def _attack_progress(attack: AttackConfig | None, n: int):
    """Progress of an attacked evaluation (PGD-50 x 5 on thousands of images takes minutes)."""
    from contextlib import nullcontext

    from pipeline.engine.console import _NoBar, progress

    if attack is None:
        return nullcontext(_NoBar())
    steps = 1 if attack.kind == "fgsm_rs" else attack.steps
    label = f"{attack.kind.upper()}-{steps}" + (f"x{attack.restarts}" if attack.restarts > 1 else "")
    return progress(n, f"{label} images")


def robust_gap(train_ra: float, test_ra: float) -> float:
    """Robust generalization gap (pp): train RA minus test RA."""
    return train_ra - test_ra


def robust_overfitting(best_ra: float, final_ra: float) -> float:
    """Robust overfitting (pp): RA at the best checkpoint minus RA at the last epoch."""
    return best_ra - final_ra


def _has(row: dict, key: str) -> bool:
    value = row.get(key)
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def select_best(history: Sequence[dict], key: str = "val_ra") -> int:
    """Index of the row with the highest `key` (ties: the earliest); rows without it are skipped."""
    best = None
    for i, row in enumerate(history):
        if _has(row, key) and (best is None or row[key] > history[best][key]):
            best = i
    if best is None:
        raise PipelineError(f"no epoch in the history has {key!r}: was that evaluation switched off?")
    return best


def _last(history: Sequence[dict], key: str) -> float | None:
    return next((row[key] for row in reversed(history) if _has(row, key)), None)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summarize_history(history: Sequence[dict], select_key: str = "val_ra") -> dict[str, Any]:
    """SW main_adv summary: RA/SA at the best-`select_key` epoch, at the last evaluated epoch, and the diffs.

    SA_best is the test SA of the same epoch as RA_best (not the highest SA). `select_key="test_ra"`
    gives the Robust Bird script's test-selected RA_best. Values missing from a row come back as None.
    """
    i = select_best(history, select_key)
    row = history[i]
    ra_best, sa_best = row.get("test_ra"), row.get("test_sa")
    ra_final, sa_final = _last(history, "test_ra"), _last(history, "test_sa")
    return {
        "RA_best": ra_best, "RA_final": ra_final, "RA_diff": _diff(ra_best, ra_final),
        "SA_best": sa_best, "SA_final": sa_final, "SA_diff": _diff(sa_best, sa_final),
        "best_epoch": row.get("epoch", i),
    }
