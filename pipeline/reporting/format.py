"""Text for people: numbers, markdown tables, attack descriptions, FLOPs in engineering units.

Shared by the report, `compare`, `double-win`, the plots and the benchmarks, so a figure reads the
same everywhere.
"""
from __future__ import annotations

import math
from typing import Any

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_ALIGN = {"l": "---", "r": "---:", "c": ":---:"}


def num(value: Any) -> float | None:
    """A finite number, or None (bools, strings, NaN and missing values are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 1000 else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 10 ** -digits):
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


def md_table(headers: list[str], rows: list[list[Any]], align: list[str] | None = None) -> str:
    """A GitHub markdown table; `align` per column is 'l', 'r' or 'c' (default: left)."""
    align = align or ["l"] * len(headers)
    cells = [[str(c).replace("|", "\\|").replace("\n", " ") for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(_ALIGN[a] for a in align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def engineering(value: float) -> tuple[float, str]:
    """(scale, label) so that value / scale lies in [1, 1000): e.g. 3.2e11 -> (1e9, '×10⁹')."""
    if not value or not math.isfinite(value):
        return 1.0, ""
    exp = int(math.floor(math.log10(abs(value)) / 3) * 3)
    return (10.0 ** exp, "×10" + str(exp).translate(_SUPERSCRIPT)) if exp else (1.0, "")


def flops_text(value: float | None) -> str:
    if value is None:
        return "—"
    scale, unit = engineering(value)
    return f"{value / scale:.2f} {unit}".strip()


def _over_255(x: float) -> str:
    scaled = x * 255
    return f"{round(scaled)}/255" if abs(scaled - round(scaled)) < 1e-6 else f"{x:.4g}"


def eps_text(x: float) -> str:
    """An L-inf budget as papers write it: '8/255' when it is a whole number of 255ths."""
    return _over_255(x)


def attack_text(attack: dict | None, short: bool = False) -> str:
    """An attack config dump (training, evaluation or AutoAttack) as people read it: in full 'PGD-20,
    eps 8/255, step 2/255, random start, 1 restart'; `short` gives the name alone ('PGD-20', 'FGSM-RS')."""
    if not attack:
        return "unknown attack"
    kind = str(attack.get("kind", "?"))
    name = {"pgd": f"PGD-{attack.get('steps', '?')}", "fgsm_rs": "FGSM-RS"}.get(kind, kind)
    if short:
        return name
    parts = [name]
    for key in ("eps", "step"):
        if num(attack.get(key)) is not None:
            parts.append(f"{key} {_over_255(attack[key])}")
    if kind == "pgd" and "random_start" in attack:
        parts.append("random start" if attack["random_start"] else "no random start")
    if num(attack.get("restarts")) is not None:
        r = int(attack["restarts"])
        parts.append(f"{r} restart{'s' if r != 1 else ''}")
    for key in ("norm", "version"):
        if attack.get(key):
            parts.append(f"{key} {attack[key]}")
    return ", ".join(parts)


def train_label(stage_config: dict) -> str:
    """Legend of a stage's running train accuracy: which batches it was measured on."""
    mode = stage_config.get("mode")
    if mode in ("pgd", "fast"):
        kind = {"pgd": "pgd", "fast": "fgsm_rs"}[mode]
        return f"train (running, {attack_text({**(stage_config.get('attack') or {}), 'kind': kind}, short=True)} adversarial)"
    return "train (running, clean)" if mode == "clean" else "train (running)"


_KEY_METRICS = ("RA_best", "RA_final", "RA_diff", "SA_best", "SA_final", "best_epoch", "density", "test_sa",
                "test_ra", "train_ra", "robust_gap", "robust_overfitting", "sparsity", "parity_max_abs_diff",
                "onnx_bytes", "cpu_b1_median_ms", "cpu_b1_p90_ms")


def key_metrics(metrics: dict, limit: int = 6) -> str:
    keys = [k for k in _KEY_METRICS if num(metrics.get(k)) is not None][:limit]
    if not keys:
        keys = [k for k, v in metrics.items() if num(v) is not None][:4]
    return ", ".join(f"{k} {fmt(metrics[k], 3 if k.endswith('_ms') or k == 'density' else 2)}" for k in keys)
