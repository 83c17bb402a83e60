"""Dense PGD-AT vs Robust Bird vs Flying Bird vs Flying Bird+ at 80% sparsity, reduced scale (issue 5, item 5a).

The Sparsity Winning Twice headline table (spec §6.1) on the CIFAR-10 subset (10k train / 5k val / 1k
test images, /work/shared/data): PreActResNet-18, PGD-10 training (8/255, step 2/255), PGD-20
evaluation, SGD 0.1 / 0.9 / 5e-4, batch 128, best checkpoint on val RA, the same E PGD-AT epochs, data
and seed for every model:
- dense: lr x0.1 at 1/2 and 3/4 of training;
- Robust Bird: clean early-bird search (at most E epochs) + E epochs of PGD-AT of the 80%-sparse ticket,
  lr x0.1 at 1/4 and 3/4 (its training FLOPs include the search);
- Flying Bird / Flying Bird+: dynamic sparse PGD-AT from scratch at density 0.2 with the dense recipe,
  the reference's 900 / 1200-step update intervals rescaled to the same number of epochs, FB+ adaptive
  from half of training.
Each model is its own run (OUT/dense, OUT/robust_bird, OUT/flying_bird, OUT/flying_bird_plus) ending in
an `evaluate` stage (canonical robust gap: PGD-20 RA on the non-augmented train split minus test RA);
`pipeline compare` reads them (OUT/sparsity_win_reduced.md, .csv, .json). The runs are built exactly as in
robust_bird_reduced.py and flying_bird_reduced.py, so with the same --out those scripts reuse them.

Prints the headline table, FLOPs saved against dense, the early-bird epoch and DST figures, then one
verdict line per claim of the paper (less overfitting, smaller gap, higher final RA, best RA within
1 pp, cheaper training). Meant for a GPU (preact_resnet18 at 40-100 epochs):

    python benchmarks/sparsity_win_reduced.py --epochs 40 --device cuda
A smoke run on CPU, a few minutes (batch 32, PGD-2, 64-image evaluations, topology updates every step;
the one-epoch early-bird search warns that its window never filled and prunes its last epoch):

    python benchmarks/sparsity_win_reduced.py --epochs 1 --limit-steps 2 --device cpu
The CPU protocol of benchmarks/RESULTS.md, where dense PGD-AT over-fits (convnet4, 391k parameters;
about 55 min per seed on one core):

    python benchmarks/sparsity_win_reduced.py --arch convnet4 --epochs 60 --sizes 1000,300,300 \
        --batch-size 32 --augment none --train-attack-steps 3 --eval-attack-steps 5 --device cpu \
        --out runs/sw_cnn4_seed1
With --arch small_cnn (24k parameters, --epochs 20) dense PGD-AT does not over-fit at all, so that run
tests the FLOPs claim only.
Before the headline table it prints the dense run's per-epoch curve (train RA on the adversarial
training batches, val / test RA), where robust overfitting shows as val/test RA falling after its
peak while train RA keeps rising. Re-running with the same --out continues a cut-off run. The
verdict is the last line printed.
"""
from __future__ import annotations

import sys
from pathlib import Path

import reduced_common as rc


def dense_curve(run_dir: Path) -> str:
    """The dense stage's history as a markdown table: epoch, lr, train RA (on the training attack's
    batches, during the epoch), val RA, test RA, with the best val epoch marked."""
    from pipeline.engine.rundir import StageRecord
    from pipeline.reporting.format import fmt, md_table

    rows = StageRecord(run_dir, "dense").history()
    best = max(rows, key=lambda r: r.get("val_ra", float("-inf")))["epoch"] if rows else None
    body = [[f"{r['epoch']}{' (best val)' if r['epoch'] == best else ''}", f"{r['lr']:.3g}", fmt(r.get("train_acc")),
             fmt(r.get("val_ra")), fmt(r.get("test_ra")), fmt(r.get("test_sa"))] for r in rows]
    return md_table(["epoch", "lr", "train RA (training attack)", "val RA", "test RA", "test SA"], body,
                    ["l"] + ["r"] * 5)


def main(argv: list[str] | None = None) -> int:
    args = rc.parse(rc.sw_parser(__doc__, "sparsity_win_reduced"), argv)
    models = [rc.dense_pgd_at(args), rc.robust_bird(args, density=args.density),
              rc.flying_bird(args, density=args.density), rc.flying_bird(args, density=args.density, plus=True)]

    def before(run_dirs: list[Path]) -> None:
        print("dense per-epoch curve:")
        print(dense_curve(run_dirs[0]))
        print()

    return rc.compare_sw(args, models, "Sparsity Winning Twice (RB, FB, FB+)", before=before)


if __name__ == "__main__":
    sys.exit(main())
