"""Dense PGD-AT vs Robust Bird at reduced scale, through the real engine (issue 3, item 8).

PreActResNet-18 on the CIFAR-10 subset (10k train / 5k val / 1k test images, /work/shared/data), PGD-10
training and PGD-20 evaluation, SGD 0.1 / 0.9 / 5e-4, batch 128, best checkpoint on val RA.
- dense: PGD-AT for E epochs, lr x0.1 at 1/2 and 3/4 of training (SW main_adv: 100, 150 of 200).
- Robust Bird: an `early_bird` search (clean training from scratch, at most E epochs, lr x0.1 at 1/4 and
  3/4; global magnitude masks at density 0.2 over the conv weights each epoch, window 5, threshold 0.08),
  the ticket cut by global |w| over conv + linear at 80% sparsity from the emergence epoch's weights, then
  `finetune`: PGD-AT of the sparse ticket for the same E epochs, lr x0.1 at 1/4 and 3/4 (RB: 50, 150 of 200).
"Equal epochs" = E PGD-AT epochs each; Robust Bird's training FLOPs include its dense clean search.
Each model is its own run (OUT/dense, OUT/robust_bird) ending in an `evaluate` stage (canonical robust
gap: PGD-20 RA on the non-augmented train split minus test RA; the running-train-batch gap beside it);
`pipeline compare` reads them (OUT/robust_bird_reduced.md).

Prints the headline table (RA best / final / diff, SA, training and inference FLOPs, gap), FLOPs saved
against dense (corrected and paper-compatible counts), the ticket's emergence epoch, then a verdict per
claim of the paper. Meant for a GPU (preact_resnet18 at 40-100 epochs):

    python benchmarks/robust_bird_reduced.py --epochs 40 --device cuda
Smoke run on CPU (`--limit-steps` also shrinks the batch to 32, PGD to 2 steps and evaluation to 64 images;
with one epoch the early-bird window never fills, so the search warns and uses its last epoch):

    python benchmarks/robust_bird_reduced.py --epochs 1 --limit-steps 2 --device cpu
The last line printed is the verdict. Re-running continues a cut-off run (same --out).
"""
from __future__ import annotations

import sys

import reduced_common as rc


def main(argv: list[str] | None = None) -> int:
    ap = rc.sw_parser(__doc__, "robust_bird_reduced")
    ap.add_argument("--window", type=int, default=5, help="early-bird masks compared")
    ap.add_argument("--threshold", type=float, default=0.08, help="early-bird Hamming distance threshold")
    args = rc.parse(ap, argv)

    models = [rc.dense_pgd_at(args),
              rc.robust_bird(args, density=args.density, window=args.window, threshold=args.threshold)]
    return rc.compare_sw(args, models, "Sparsity Winning Twice (Robust Bird)")


if __name__ == "__main__":
    sys.exit(main())
