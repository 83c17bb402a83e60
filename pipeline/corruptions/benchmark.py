"""Corruption robustness of a model: accuracy per corruption x severity, means, and clean accuracy.

Follows RobustBench's convention: the headline figure is the unweighted mean accuracy over
corruptions and severities (`mean_acc_15` over the 15 standard types, `mean_acc_19` over all 19, each
only when every type of its set was evaluated; `mean_acc` over every type evaluated).
A run uses either a published set or generated corruptions, never both in one mean.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.engine.errors import DataError
from pipeline.metrics.evaluation import evaluate

from pipeline.corruptions.catalog import ALL, get
from pipeline.corruptions.generate import corrupt_images
from pipeline.corruptions.means import exact_means
from pipeline.corruptions.published import load_published
from pipeline.corruptions.config import CorruptionConfig, CorruptionName  # noqa: F401  (moved; still importable)


def _to_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def evaluate_corruptions(model: nn.Module, test_x: torch.Tensor, test_y: torch.Tensor, cfg: CorruptionConfig, *,
                         device: torch.device | str, batch_size: int, num_classes: int | None = None,
                         log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Evaluate `model` on the corruptions `cfg` names; `test_x` (N, C, H, W) uint8 is the clean test split."""
    bs = cfg.batch_size or batch_size
    published = cfg.path is not None and cfg.path.is_dir()
    if cfg.path is not None and not published and not cfg.generate:
        raise DataError(f"corruptions.path: directory not found: {cfg.path}; set `generate: true` to generate "
                        "the corruptions from the test split instead")
    started = time.time()
    per: dict[str, list[float]] = {}
    if published:
        source = load_published(cfg.path, cfg.types)
        n = source.per_severity if cfg.limit is None else min(cfg.limit, source.per_severity)
        labels = torch.from_numpy(source.targets(n))
        if num_classes is not None and len(labels) and int(labels.max()) >= num_classes:
            raise DataError(f"{cfg.path}/labels.npy: label {int(labels.max())} but the model has {num_classes} classes")
        types = source.types
        shape = source.images(types[0], 1, 1).shape[1:]
        want = (test_x.shape[2], test_x.shape[3], test_x.shape[1])
        if tuple(shape) != want:
            raise DataError(f"{cfg.path}: images are {tuple(shape)} (H, W, C) but the model takes {want}")
        for name in types:
            per[name] = [evaluate(model, _to_nchw(source.images(name, s, n)), labels, batch_size=bs,
                                  device=device)["acc"] for s in cfg.severities]
            log(f"corruption {name}: " + " ".join(f"{a:.1f}" for a in per[name]))
        clean_n = min(n, len(test_y))
        kind, backend = "published", None
    else:
        types = list(cfg.types) if cfg.types is not None else list(ALL)
        n = len(test_y) if cfg.limit is None else min(cfg.limit, len(test_y))
        clean_hwc = test_x[:n].permute(0, 2, 3, 1).contiguous().numpy()
        labels = test_y[:n]
        if cfg.backend == "imagecorruptions":
            from pipeline.corruptions.library import LibraryCorruptor, library_version

            backend = library_version()
        else:
            backend = "builtin"
        for name in types:
            accs = []
            for s in cfg.severities:
                if cfg.backend == "imagecorruptions":
                    images = LibraryCorruptor(name, s, cfg.seed)(clean_hwc)
                else:
                    images = corrupt_images(clean_hwc, name, s, seed=cfg.seed)
                accs.append(evaluate(model, _to_nchw(images), labels, batch_size=bs, device=device)["acc"])
            per[name] = accs
            log(f"corruption {name} (generated): " + " ".join(f"{a:.1f}" for a in accs))
        clean_n = n
        kind = "generated"

    clean = evaluate(model, test_x, test_y, batch_size=bs, device=device, limit=clean_n)["acc"]
    all_accs = [a for accs in per.values() for a in accs]
    mean_15, mean_19 = exact_means(per)
    result: dict[str, Any] = {
        "source": kind,
        "backend": backend,
        "path": str(cfg.path) if published else None,
        "seed": cfg.seed if kind == "generated" else None,
        "n": n,
        "severities": list(cfg.severities),
        "types": list(per),
        "clean_acc": clean,
        "clean_n": clean_n,
        "mean_acc": float(np.mean(all_accs)),
        "mean_acc_15": mean_15,
        "mean_acc_19": mean_19,
        "per_type_mean": {name: float(np.mean(accs)) for name, accs in per.items()},
        "per": per,
        "seconds": round(time.time() - started, 3),
    }
    if kind == "generated" and backend == "builtin":
        result["notes"] = {name: get(name).note for name in per if get(name).note}
    return result


def generation_parameters(types: list[str]) -> dict[str, list]:
    """The builtin generator's parameter per severity, for the record next to the numbers."""
    return {name: [list(p) if isinstance(p, tuple) else p for p in get(name).params] for name in types}
