"""Robust accuracy as a function of eps (a security curve), as the adversarial-pruning benchmark compares
pruned models: PGD-k at every eps of the curve config, AutoAttack too when asked; config, step rule and
record in pipeline/metrics/curve_config.py."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pipeline.engine.errors import ConfigError
from pipeline.metrics.attacks import PGDEvalConfig
from pipeline.metrics.autoattack import AutoAttackConfig, run_autoattack
from pipeline.metrics.curve_config import CurvePoint, SecurityCurve, SecurityCurveConfig
from pipeline.metrics.evaluation import evaluate


def autoattack_at(cfg: SecurityCurveConfig, eps: float) -> AutoAttackConfig:
    return cfg.autoattack.model_copy(update={"eps": eps, "splits": [cfg.split]})


def security_curve(model: nn.Module, data, cfg: SecurityCurveConfig, *, limit: int | None, batch_size: int,
                   device, seed: int, autoattack_skipped: str | None = None,
                   log: Callable[[str], None] = lambda msg: None) -> SecurityCurve:
    """The curve of `model` on `cfg.split` of `data` (its first `cfg.limit or limit` images).

    Every PGD point uses the same images and the same attack seed, so points differ only in eps. AutoAttack
    runs on its own first `n` images (stated per point) unless `autoattack_skipped` gives the reason it
    cannot run."""
    x, y = getattr(data, f"{cfg.split}_x"), getattr(data, f"{cfg.split}_y")
    if len(y) == 0:
        raise ConfigError(f"security_curve.split: the {cfg.split} split is empty; use split: test")
    limit = cfg.limit or limit
    clean = evaluate(model, x, y, batch_size=batch_size, device=device, limit=limit)
    with_aa = cfg.autoattack is not None and autoattack_skipped is None
    n_aa = min(cfg.autoattack.n or len(y), limit or len(y), len(y)) if with_aa else None
    points, backend = [], None
    for eps in cfg.eps:
        if eps == 0:  # the eps box is the image itself: the clean accuracy of the same images
            point = CurvePoint(eps=0.0, pgd=clean["acc"], step=0.0)
            if with_aa:
                point.autoattack = evaluate(model, x, y, batch_size=batch_size, device=device, limit=n_aa)["acc"]
                point.autoattack_n = n_aa
            points.append(point)
            continue
        attack = PGDEvalConfig(eps=eps, step=cfg.step(eps), steps=cfg.steps, restarts=cfg.restarts,
                               random_start=cfg.random_start, splits=[cfg.split])
        out = evaluate(model, x, y, batch_size=batch_size, attack=attack, device=device, limit=limit, seed=seed)
        point = CurvePoint(eps=eps, pgd=out["acc"], step=attack.step)
        if with_aa:
            aa = autoattack_at(cfg, eps)
            res = run_autoattack(model, x[:n_aa], y[:n_aa], aa, device=device, seed=seed,
                                 batch_size=aa.batch_size or batch_size)
            point.autoattack, point.autoattack_n, backend = res["acc"], res["n"], res["backend"]
        points.append(point)
        log(f"security curve eps {eps * 255:g}/255: PGD-{cfg.steps} RA {point.pgd:.2f} (n={out['n']})"
            + (f", AutoAttack {point.autoattack:.2f} (n={point.autoattack_n})" if point.autoattack is not None else ""))
    aa_info = None
    if cfg.autoattack is not None:
        aa_info = ({"version": cfg.autoattack.version, "skipped": autoattack_skipped} if autoattack_skipped
                   else {"version": cfg.autoattack.version, "n": cfg.autoattack.n, "backend": backend})
    return SecurityCurve(split=cfg.split, n=clean["n"], rule=cfg.rule(), points=points, autoattack=aa_info,
                         attack={"kind": "pgd", "steps": cfg.steps, "step_factor": cfg.step_factor,
                                 "restarts": cfg.restarts, "random_start": cfg.random_start})
