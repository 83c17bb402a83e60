"""Dense vs SET / RigL at 30-50% sparsity on generated CIFAR-10 corruptions, reduced scale (issue 5, item 5b).

The claim of "Dynamic Sparse Training versus Dense Training: The Unexpected Winner in Image Corruption
Robustness" (ICLR 2025; landscape §A) on the CIFAR-10 subset (10k train / 5k val / 1k test images,
/work/shared/data): VGG-16-BN, standard (clean) training, the same E epochs, data and seed for every
model (SGD 0.1 / 0.9 / 5e-4, batch 128, lr x0.1 at 1/2 and 3/4, last epoch kept). The sparse models
use the unified schedule of configs/dst_vgg16_cifar10_corruption.yaml: ERK layer densities, random
initial positions, drop fraction 0.5 cosine-decayed to 0.005, magnitude drop, growth at random (SET)
or by dense gradient (RigL), an update every 1000 CIFAR steps rescaled to the same number of epochs.
Each model is its own run (OUT/dense, OUT/set_s30, OUT/rigl_s30, ...) ending in an `evaluate` stage:
clean accuracy, PGD-20 RA on the test split (near 0 after standard training) and corruption accuracy on
corruptions GENERATED from the test split (`corruptions: {generate: true}`: the 15 standard + 4 extra
types x 5 severities, builtin CIFAR-10-C parameters, fixed seed so every model sees the same images),
reported as the unweighted mean (RobustBench's convention). `pipeline compare` reads the runs
(OUT/dst_corruption_reduced.md). Generated corruptions are not CIFAR-10-C: compare the models with each other only.

Prints the table (clean accuracy, mean corruption accuracy over all 19 types and over the 15 standard
ones, FLOPs saved, DST figures), one verdict line per sparsity (does DST beat dense on mean corruption
accuracy?), clean accuracy and corruption accuracy relative to clean as context, and as the last line
the verdict over all sparse runs. Meant for a GPU (vgg16_bn at 40-100 epochs; 7 models by default):

    python benchmarks/dst_corruption_reduced.py --epochs 80 --device cuda
    python benchmarks/dst_corruption_reduced.py --epochs 60 --sparsities 0.4 --device cuda   # 3 models
Smoke run on CPU (`--limit-steps` also shrinks the batch to 32, PGD to 2 steps, evaluation to 64 images,
corruptions to 10 images per type x severity, and updates the topology every step):

    python benchmarks/dst_corruption_reduced.py --epochs 1 --limit-steps 2 --device cpu
Re-running continues a cut-off run (same --out).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

import reduced_common as rc

METHODS = {"set": ("SET", "random"), "rigl": ("RigL", "gradient")}


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions such as 0.3,0.4,0.5, got {text!r}")
    if not values or any(not 0 < v < 1 for v in values) or len({round(v * 100) for v in values}) != len(values):
        raise argparse.ArgumentTypeError(f"expected sparsities in (0, 1), distinct in whole percent, got {text!r}")
    return sorted(values)


def _methods(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in METHODS]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct names out of {', '.join(METHODS)}, got {text!r}")
    return names


def corruption_block(args: argparse.Namespace) -> dict[str, Any]:
    block: dict[str, Any] = {"generate": True, "seed": 0}
    if args.corruption_limit is not None:
        block["limit"] = args.corruption_limit
    return block


def clean_training(args: argparse.Namespace) -> dict[str, Any]:
    return rc.training(args, mode="clean", robust_eval=False, select="final")


def judge(args: argparse.Namespace, input_stage: str) -> dict[str, Any]:
    return rc.evaluate_stage(args, input_stage, splits=["test"], corruptions=corruption_block(args),
                             checkpoints="selected")


def dense(args: argparse.Namespace) -> rc.Model:
    return rc.Model("dense", "dense", [{"name": "dense", "type": "dense_warmup", **clean_training(args)},
                                       judge(args, "dense")])


def dst(args: argparse.Namespace, method: str, sparsity: float) -> rc.Model:
    label, grow = METHODS[method]
    pct = round(sparsity * 100)
    key = f"{method}_s{pct}"
    sparsity_block = {
        "init": "erk", "init_positions": "random", "dense_first": False, "dense_last": False,
        "update_every": rc.steps_like(1000, args), "update_unit": "steps", "second_update_every": None,
        "second_after_epoch": None, "drop_fraction": 0.5, "drop_fraction_min": 0.005, "drop_decay": "cosine",
        "drop_count": "ceil", "stop_fraction": None, "grow": grow,
    }
    stage = {"name": key, "type": "rewire", "method": method, "density": round(1 - sparsity, 6),
             **clean_training(args), "sparsity": sparsity_block}
    return rc.Model(key, f"{label} {pct}%", [stage, judge(args, key)])


COLUMNS = (
    rc.Col("test_sa", "clean acc"), rc.Col("corruption_mean_acc", "corruption mean (19)"),
    rc.Col("corruption_mean_15", "corruption mean (15)"), rc.Col("corruption_clean", "clean (same images)"),
    rc.Col("corruption_retained", "corrupted / clean", rc.three),
    rc.Col("updates", "updates"), rc.Col("ever_active", "ever active", rc.pct),
)


def main(argv: list[str] | None = None) -> int:
    ap = rc.parser(__doc__, "dst_corruption_reduced", epochs=80, arch="vgg16_bn")
    ap.add_argument("--sparsities", type=_fractions, default=[0.3, 0.4, 0.5],
                    help="comma-separated sparsities of the DST models (default 0.3,0.4,0.5)")
    ap.add_argument("--methods", type=_methods, default=list(METHODS), help="comma-separated: set,rigl (default both)")
    ap.add_argument("--corruption-limit", type=int, default=None,
                    help="first N test images per corruption x severity (default: the whole test split)")
    args = rc.parse(ap, argv)
    if args.corruption_limit is not None and args.corruption_limit <= 0:
        ap.error(f"--corruption-limit must be > 0, got {args.corruption_limit}")

    by_sparsity = {s: [dst(args, m, s) for m in args.methods] for s in args.sparsities}
    models = [dense(args)] + [m for group in by_sparsity.values() for m in group]

    def body() -> int:
        text, rows = rc.summarize(args, models, rc.run_models(args, models))
        for r in rows:
            r["corruption_retained"] = rc.ratio(r.get("corruption_mean_acc"), r.get("corruption_clean"))
        sources = sorted({str(r.get("corruption_source")) for r in rows})
        n = rows[0].get("corruption_images")
        heading = (f"sparsities {', '.join(f'{s:.0%}' for s in args.sparsities)}, {' / '.join(sources)} "
                   f"corruptions ({n} images per corruption x severity)")
        rc.print_report(args, heading, text, rows, COLUMNS)
        by_key = {r["key"]: r for r in rows}
        claims = [rc.claim(args, rows, "corruption_mean_acc", f"mean corruption accuracy at {s:.0%} sparsity (%)",
                           "DST beats dense", better="higher", compared=[by_key[m.key] for m in group])
                  for s, group in by_sparsity.items()]
        for c in claims:
            print(c.line)
        context = [
            rc.claim(args, rows, "test_sa", "context, clean test accuracy (%)",
                     f"DST matches dense (within {rc.MATCH_TOLERANCE_PP:g} pp)", better="higher",
                     tolerance=rc.MATCH_TOLERANCE_PP),
            rc.claim(args, rows, "corruption_retained", "context, corrupted / clean accuracy",
                     "DST loses less to corruption", better="higher", show=rc.three),
        ]
        for c in context:
            print(c.line)
        print(rc.verdict(args, "Dynamic Sparse Training versus Dense Training (DST more robust to corruption)",
                         claims))
        return 0

    return rc.main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
