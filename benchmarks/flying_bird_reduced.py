"""Dense PGD-AT vs Flying Bird vs Flying Bird+ at reduced scale, through the real engine (issue 4, item 10).

PreActResNet-18 on the CIFAR-10 subset (10k train / 5k val / 1k test images, /work/shared/data), PGD-10
training, PGD-20 evaluation, the same epochs and recipe for all three (SGD 0.1 / 0.9 / 5e-4, batch 128,
lr x0.1 at 1/2 and 3/4 of training), density 0.2 with the spec's defaults rescaled to the shorter run:
the 900 / 1200-step update intervals (2.56 / 3.41 CIFAR epochs) become the same number of epochs of
this data set, the second interval and FB+ start at half of training. Each model is its own run
(OUT/dense, OUT/flying_bird, OUT/flying_bird_plus) ending in an `evaluate` stage (canonical robust gap:
PGD-20 RA on the non-augmented train split minus test RA); `pipeline compare` reads them (OUT/flying_bird_reduced.md).

Prints the headline table (RA best / final / diff, SA, training and inference FLOPs, gap), FLOPs saved
against dense (inference at the final density; training integrated over the density trajectory,
corrected and paper-compatible counts), final density, ever-active fraction, updates, overfitting
measured on the two kept checkpoints, then a verdict per claim of the paper. Meant for a GPU
(preact_resnet18 at 40-100 epochs):

    python benchmarks/flying_bird_reduced.py --epochs 40 --device cuda
Smoke run on CPU (`--limit-steps` also shrinks the batch to 32, PGD to 2 steps, evaluation to 64 images
and updates the topology every step):

    python benchmarks/flying_bird_reduced.py --epochs 1 --limit-steps 2 --device cpu
The last line printed is the verdict. Re-running continues a cut-off run (same --out).
"""
from __future__ import annotations

import sys

import reduced_common as rc


def main(argv: list[str] | None = None) -> int:
    args = rc.parse(rc.sw_parser(__doc__, "flying_bird_reduced"), argv)
    models = [rc.dense_pgd_at(args), rc.flying_bird(args, density=args.density),
              rc.flying_bird(args, density=args.density, plus=True)]
    return rc.compare_sw(args, models, "Sparsity Winning Twice (Flying Bird, Flying Bird+)")


if __name__ == "__main__":
    sys.exit(main())
