"""Dense PGD-AT vs Robust Bird at reduced scale, through the real engine (issue 3, item 8).

PreActResNet-18 on the CIFAR-10 subset (10k train / 5k val / 1k test images, /work/shared/data), PGD-10
training and PGD-20 evaluation, SGD 0.1 / 0.9 / 5e-4, batch 128, best checkpoint on val RA.
- dense: PGD-AT for E epochs, lr x0.1 at 1/2 and 3/4 of training (SW main_adv: 100, 150 of 200).
- Robust Bird: an `early_bird` search (clean training from scratch, at most E epochs, lr x0.1 at 1/4 and
  3/4; global magnitude masks at density 0.2 over the conv weights each epoch, window 5, threshold 0.08),
  the ticket cut by global |w| over conv + linear at 80% sparsity from the emergence epoch's weights, then
  `finetune`: PGD-AT of the sparse ticket for the same E epochs, lr x0.1 at 1/4 and 3/4 (RB: 50, 150 of 200).
"Equal epochs" = E PGD-AT epochs each; Robust Bird's training FLOPs include its dense clean search.
Each model is judged by an `evaluate` stage (canonical robust gap: PGD-20 RA on the non-augmented train
split minus test RA; the running-train-batch gap of the RB script beside it).

Prints RA best / final, robust overfitting (best - final), the gaps, the ticket's emergence epoch and the
training / inference FLOPs saved against dense (corrected and paper-compatible counts). Meant for a GPU:

    python benchmarks/robust_bird_reduced.py --epochs 40 --device cuda
Smoke run on CPU (`--limit-steps` also shrinks the batch to 32, PGD to 2 steps and evaluation to 64 images;
with one epoch the early-bird window never fills, so the search warns and uses its last epoch):

    python benchmarks/robust_bird_reduced.py --epochs 1 --limit-steps 2 --device cpu
The last line printed is the Robust Bird / dense summary. Re-running continues a cut-off run (--out).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-subset.npz"


def build_config(args: argparse.Namespace) -> dict:
    smoke = args.limit_steps is not None
    batch = 32 if smoke else 128
    attack_steps, eval_steps = (2, 2) if smoke else (10, 20)
    limits = {"val_limit": 64, "test_limit": 64} if smoke else {}
    e = args.epochs
    common = {
        "epochs": e, "batch_size": batch,
        "optimizer": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        "eval": {"every": 1, "batch_size": 512, **limits, "attack": {"kind": "pgd", "steps": eval_steps}},
        "progress_every_steps": 200, "max_steps_per_epoch": args.limit_steps,
        "precision": "bf16" if args.device == "cuda" else "fp32",
    }
    pgd = {"mode": "pgd", "attack": {"eps": "8/255", "step": "2/255", "steps": attack_steps}, "select": "best"}
    rb_schedule = {"kind": "multistep", "milestones": [max(1, e // 4), max(1, e * 3 // 4)]}
    stages = [
        {"name": "dense", "type": "dense_warmup", **common, **pgd,
         "schedule": {"kind": "multistep", "milestones": [max(1, e // 2), max(1, e * 3 // 4)]}},
        {"name": "early_bird", "type": "early_bird", **common, "mode": "clean", "schedule": rb_schedule,
         "density": args.density, "window": args.window, "threshold": args.threshold,
         "criterion": {"pruner": "global_magnitude", "scope": "conv_linear"}, "on_no_emergence": "use_last"},
        {"name": "robust_bird", "type": "finetune", "input": "early_bird", **common, **pgd, "schedule": rb_schedule},
    ]
    for name in ("dense", "robust_bird"):
        stages.append({"name": f"eval_{name}", "type": "evaluate", "input": name,
                       "attack": {"kind": "pgd", "steps": eval_steps},
                       **({"train_limit": 64, "val_limit": 64, "test_limit": 64} if smoke else {})})
    return {"run": {"name": "robust_bird_reduced", "seed": args.seed, "device": args.device},
            "data": {"dataset": "npz", "path": str(args.data), "augment": "crop_flip", "norm_stats": "cifar10"},
            "model": {"arch": "preact_resnet18"}, "stages": stages}


def summarize(run_dir: Path) -> list[dict]:
    def rec(name: str) -> dict:
        return json.loads((run_dir / name / "stage.json").read_text())

    dense, search = rec("dense")["flops"], rec("early_bird")
    eb = search["early_bird"]
    rows = []
    for name in ("dense", "robust_bird"):
        r, ev = rec(name), rec(f"eval_{name}")["metrics"]
        m, fl = r["metrics"], r["flops"]
        train = {k: fl["training"][k] + (search["flops"]["training"][k] if name == "robust_bird" else 0)
                 for k in ("corrected", "paper")}
        rows.append({
            "setting": name, "RA_best": m.get("RA_best"), "RA_final": m.get("RA_final"),
            "overfitting": m.get("RA_diff"), "SA_best": m.get("SA_best"), "SA_final": m.get("SA_final"),
            "gap": ev.get("robust_gap"), "gap_running_train": ev.get("robust_gap_running_train"),
            "density": m.get("density", 1.0),
            "eb_epoch": (eb["epoch"] if eb["emerged"] else f"none ({eb['epochs_run']})") if name != "dense" else None,
            "inference_saved": 1 - fl["inference"]["sparse_flops"] / dense["inference"]["dense_flops"],
            "train_saved_corrected": 1 - train["corrected"] / dense["training"]["corrected"],
            "train_saved_paper": 1 - train["paper"] / dense["training"]["paper"],
        })
    return rows


_FRACTIONS = ("density", "inference_saved", "train_saved_corrected", "train_saved_paper")


def _fmt(value, column: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if column in _FRACTIONS else f"{value:.2f}"  # fractions vs percentage points
    return str(value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40, help="PGD-AT epochs of each model (and the search's maximum)")
    ap.add_argument("--limit-steps", type=int, default=None, help="smoke run: steps per epoch (and small everything)")
    ap.add_argument("--density", type=float, default=0.2)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--threshold", type=float, default=0.08)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "robust_bird_reduced")
    args = ap.parse_args()
    if not math.isfinite(args.density) or not 0 < args.density <= 1:
        ap.error(f"--density must be in (0, 1], got {args.density}")

    args.out.mkdir(parents=True, exist_ok=True)
    cfg_path = args.out / "config.input.json"  # JSON is YAML
    cfg_path.write_text(json.dumps(build_config(args), indent=1))
    run_dir = args.out / "run"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(cfg_path), "--run-dir", str(run_dir), "-q"],
                          cwd=REPO)
    if proc.returncode != 0:
        print(f"pipeline exited {proc.returncode}; see {run_dir / 'run.log'}", file=sys.stderr)
        return proc.returncode
    rows = summarize(run_dir)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1))
    cols = list(rows[0])
    print(f"{args.epochs} epochs{' (smoke: ' + str(args.limit_steps) + ' steps/epoch)' if args.limit_steps else ''}, "
          f"density {args.density}, results in {run_dir}")
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(_fmt(row[c], c) for c in cols))
    d, rb = rows
    print(f"RA best/final: dense {_fmt(d['RA_best'])}/{_fmt(d['RA_final'])}, Robust Bird {_fmt(rb['RA_best'])}/"
          f"{_fmt(rb['RA_final'])}; gap dense {_fmt(d['gap'])}, RB {_fmt(rb['gap'])}; overfitting dense "
          f"{_fmt(d['overfitting'])}, RB {_fmt(rb['overfitting'])}; FLOPs saved by RB: training "
          f"{rb['train_saved_corrected']:.1%} (paper count {rb['train_saved_paper']:.1%}), "
          f"inference {rb['inference_saved']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
