"""Security curves (RA against eps) as a table and one figure, for `pipeline report` and `pipeline compare`.

Each row is one attack of one run: its RA (%) at every eps, the images behind it (n) and the step rule;
runs evaluated at different eps share one header (a dash where a run has no such point).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.metrics.curve_config import SecurityCurve
from pipeline.reporting.format import eps_text, fmt, md_table


def _key(eps: float) -> float:
    return round(eps * 255, 6)


def curve_table(curves: dict[str, SecurityCurve]) -> str:
    """Markdown: one row per run and attack (PGD-k, and AutoAttack where it ran), one column per eps."""
    grid = sorted({_key(p.eps) for c in curves.values() for p in c.points})
    headers = ["run", "attack", *[f"ε {eps_text(k / 255)}" for k in grid], "n", "split"]
    rows = []
    for label, c in curves.items():
        by_eps = {_key(p.eps): p for p in c.points}
        rows.append([label, f"{c.label()} ({c.rule})", *[fmt(by_eps[k].pgd) if k in by_eps else "—" for k in grid],
                     fmt(c.n), c.split])
        aa = c.autoattack or {}
        if aa.get("skipped"):
            rows.append([label, f"AutoAttack {aa.get('version', '')}: skipped ({aa['skipped']})",
                         *["—"] * len(grid), "—", c.split])
        elif aa:
            ns = sorted({p.autoattack_n for p in c.points if p.autoattack_n is not None})
            rows.append([label, f"AutoAttack {aa.get('version', '')}",
                         *[fmt(by_eps[k].autoattack) if k in by_eps else "—" for k in grid],
                         ", ".join(fmt(n) for n in ns) or "—", c.split])
    return md_table(headers, rows, ["l", "l", *["r"] * len(grid), "r", "l"])


def curve_plot(curves: dict[str, SecurityCurve], path: Path, title: str) -> Path:
    from pipeline.reporting import plots  # matplotlib only when a curve is drawn

    series = {label: {"eps": [p.eps for p in c.points], "pgd": [p.pgd for p in c.points], "attack": c.label(),
                      "autoattack": [p.autoattack for p in c.points]} for label, c in curves.items()}
    ns = sorted({c.n for c in curves.values()})
    n_text = f"{'/'.join(sorted({c.split for c in curves.values()}))} images: n = {', '.join(fmt(n) for n in ns)}"
    return plots.security_curves(series, path, title=title, n_text=n_text)


NOTE = ("RA (%) at each L∞ budget; at ε 0 the box is the image itself, so that point is the clean accuracy of "
        "the same images. PGD points share the images and the attack seed; AutoAttack runs on its own first n.")
