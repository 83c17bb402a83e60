"""What a corruption mean stands for: the 15-standard-type mean (RobustBench's CIFAR-10-C figure), the
19-type mean, and how a run departs from them (generated images, fewer types or severities).

Torch-free: `pipeline compare` and `pipeline report` read these from a recorded `corruption` dict.
"""
from __future__ import annotations

from typing import Any

from pipeline.corruptions.catalog import ALL, SEVERITIES, STANDARD

# Footnote markers, one per way a mean departs from the published 15/19-type, 5-severity figure.
GENERATED, FEWER_TYPES, FEWER_SEVERITIES = "*", "†", "‡"
LEGEND = {
    GENERATED: "generated from the test split, not the published CIFAR-10-C images",
    FEWER_TYPES: "fewer corruption types than the column names (mean over the types evaluated)",
    FEWER_SEVERITIES: "fewer than the 5 severities (mean over the severities evaluated)",
}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def exact_means(per: dict[str, list[float]]) -> tuple[float | None, float | None]:
    """(mean over the 15 standard types, mean over all 19) x severities; None unless every type of that
    set was evaluated, so a recorded `mean_acc_15` / `mean_acc_19` is always the full-set figure."""
    def over(names) -> float | None:
        if not all(name in per for name in names):
            return None
        return _mean([float(a) for name in names for a in per[name]])
    return over(STANDARD), over(ALL)


def column_means(corr: dict[str, Any]) -> dict[str, Any]:
    """The compare/report cells of one recorded corruption evaluation.

    `mean_15`: over the standard types evaluated; `mean_19`: over every type evaluated, given only when
    some of the 4 extra types were evaluated (else the 19-type column would repeat the 15-type one);
    `marks_15` / `marks_19`: the footnote markers of each; `types_15`, `types_19`: how many types each mean
    covers; `severities`: the severities evaluated."""
    per = {name: [float(a) for a in accs] for name, accs in (corr.get("per") or {}).items()}
    severities = list(corr.get("severities") or [])
    generated = GENERATED if corr.get("source") == "generated" else ""
    width = len(severities) or max((len(accs) for accs in per.values()), default=0)  # older records: from `per`
    fewer_sev = FEWER_SEVERITIES if 0 < width < len(SEVERITIES) else ""
    standard = [name for name in STANDARD if name in per]
    extra = [name for name in per if name not in STANDARD]
    out: dict[str, Any] = {"types_15": len(standard), "types_19": len(per), "severities": severities,
                           "mean_15": None, "mean_19": None, "marks_15": "", "marks_19": ""}
    if standard:
        out["mean_15"] = _mean([a for name in standard for a in per[name]])
        out["marks_15"] = generated + (FEWER_TYPES if len(standard) < len(STANDARD) else "") + fewer_sev
    if extra:
        out["mean_19"] = _mean([a for accs in per.values() for a in accs])
        out["marks_19"] = generated + (FEWER_TYPES if len(per) < len(ALL) else "") + fewer_sev
    return out


def describe(corr: dict[str, Any]) -> str:
    """One legend line: what a run's corruption means were computed on."""
    c = column_means(corr)
    source = corr.get("source", "?")
    parts = [f"{source} corruptions" + (f" ({corr['backend']})" if corr.get("backend") else "")]
    extra = c["types_19"] - c["types_15"]
    parts.append(f"{c['types_15']} of {len(STANDARD)} standard types"
                 + (f" + {extra} of {len(ALL) - len(STANDARD)} extra" if extra else ""))
    if c["severities"]:
        parts.append("severities " + ", ".join(str(s) for s in c["severities"]))
    if corr.get("n") is not None:
        parts.append(f"n = {corr['n']} images per type × severity")
    return ", ".join(parts)
