"""Mean ± std over seeds of a reduced-scale comparison, and whether each difference beats the seed spread.

Each reduced-scale script writes OUT/<script>.summary.json (one row per model). Run the script once per
seed with its own --out, then:

    python benchmarks/seeds_summary.py runs/dst_seed1/dst_corruption_reduced.summary.json \
        runs/dst_seed2/dst_corruption_reduced.summary.json runs/dst_seed3/dst_corruption_reduced.summary.json \
        --metrics test_sa,corruption_mean_15,corruption_mean_acc --baseline dense

Every metric is read as higher-is-better (accuracies) unless --lower names it (robust overfitting
`ra_diff`, the robust gap `robust_gap`, FLOPs), e.g. for Sparsity Winning Twice:

    python benchmarks/seeds_summary.py runs/sw_cpu_seed{1,2}/sparsity_win_reduced.summary.json \
        --metrics ra_best,ra_final,ra_diff,sa_best,robust_gap --lower ra_diff,robust_gap

For every model and metric it prints mean ± sample std over the seeds; for every non-baseline model the
mean paired difference to the baseline (same seed, same data order) ± its std, and a plain word: "holds"
when the mean difference is in the better direction and exceeds its own std across seeds, "reversed"
when it goes the other way beyond its std, "within noise" otherwise. The last line counts how many model-metric pairs hold.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path


# summary keys that are not percentages (their differences are not percentage points)
_NOT_PERCENT = ("flops", "density", "epoch", "_ms", "seconds", "params")


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else math.nan)


def load(paths: list[Path]) -> list[dict[str, dict]]:
    """One {model key: row} mapping per seed file."""
    out = []
    for path in paths:
        try:
            rows = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"{path}: cannot read a summary ({exc})")
        out.append({r["key"]: r for r in rows})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summaries", nargs="+", type=Path, help="one <script>.summary.json per seed")
    ap.add_argument("--metrics", default="test_sa,corruption_mean_15,corruption_mean_acc",
                    help="comma-separated row keys to aggregate")
    ap.add_argument("--baseline", default="dense", help="model key the others are compared with")
    ap.add_argument("--lower", default="", help="comma-separated metrics (of --metrics) where lower is better")
    args = ap.parse_args(argv)
    seeds = load(args.summaries)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    lower = {m.strip() for m in args.lower.split(",") if m.strip()}
    if lower - set(metrics):
        ap.error(f"--lower: {', '.join(sorted(lower - set(metrics)))} not in --metrics ({', '.join(metrics)})")
    keys = [k for k in seeds[0] if all(k in s for s in seeds)]
    if args.baseline not in keys:
        raise SystemExit(f"--baseline {args.baseline!r} is not in every summary (models: {', '.join(keys)})")
    print(f"{len(seeds)} seeds: " + ", ".join(str(p) for p in args.summaries))
    head = "| model | " + " | ".join(metrics) + " |"
    print(head)
    print("| --- |" + " ---: |" * len(metrics))
    for k in keys:
        cells = []
        for m in metrics:
            vals = [s[k].get(m) for s in seeds]
            if any(v is None for v in vals):
                cells.append("—")
                continue
            mean, std = _mean_std([float(v) for v in vals])
            cells.append(f"{mean:.2f} ± {std:.2f}")
        print(f"| {seeds[0][k].get('label', k)} | " + " | ".join(cells) + " |")
    print()
    held = total = 0
    for k in keys:
        if k == args.baseline:
            continue
        for m in metrics:
            pairs = [(s[k].get(m), s[args.baseline].get(m)) for s in seeds]
            if any(a is None or b is None for a, b in pairs):
                continue
            diffs = [float(a) - float(b) for a, b in pairs]
            mean, std = _mean_std(diffs)
            gain = -mean if m in lower else mean  # > 0: better than the baseline
            ok = gain > 0 and (math.isnan(std) or gain > std)
            held += ok
            total += 1
            reversed_ = gain < 0 and (math.isnan(std) or -gain > std)
            word = "holds" if ok else ("reversed" if reversed_ else "within noise")
            unit = "" if any(word in m for word in _NOT_PERCENT) else " pp"
            print(f"{seeds[0][k].get('label', k)} - {args.baseline}, {m}: {mean:+.2f} ± {std:.2f}{unit} "
                  f"over {len(diffs)} seeds -> {word}")
    print(f"verdict: {held}/{total} model-metric differences beat the baseline by more than their seed-to-seed std")
    return 0


if __name__ == "__main__":
    sys.exit(main())
