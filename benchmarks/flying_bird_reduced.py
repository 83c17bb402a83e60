"""Dense PGD-AT vs Flying Bird vs Flying Bird+ at reduced scale, through the real engine.

PreActResNet-18 on the CIFAR-10 subset (10k train / 5k val / 1k test images, /work/shared/data), PGD-10
training, PGD-20 evaluation, the same epochs and recipe for all three (SGD 0.1 / 0.9 / 5e-4, batch 128,
lr x0.1 at 1/2 and 3/4 of training), density 0.2 with the spec's defaults rescaled to the shorter run:
the 900 / 1200-step update intervals (2.56 / 3.41 CIFAR epochs) become the same number of epochs of
this data set, the second interval and FB+ start at half of training. Each model is then judged by an
`evaluate` stage (canonical robust gap: PGD-20 RA on the non-augmented train split minus test RA).

Prints RA best / final, robust overfitting (best - final, from the history and measured on the two kept
checkpoints), the robust gaps (canonical at the final epoch; running-train), density and FLOPs saved against
dense (inference at the final density; training integrated over the density trajectory, corrected and
paper-compatible counts). Meant for a GPU:

    python benchmarks/flying_bird_reduced.py --epochs 40 --device cuda
Smoke run on CPU (`--limit-steps` also shrinks the batch to 32, PGD to 2 steps and evaluation to 64 images):

    python benchmarks/flying_bird_reduced.py --epochs 1 --limit-steps 2
The last line printed is the FB+ / FB / dense summary.
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
REFERENCE_STEPS_PER_EPOCH = 352  # 45k CIFAR images at batch 128


def build_config(args: argparse.Namespace) -> dict:
    smoke = args.limit_steps is not None
    batch = 32 if smoke else 128
    attack_steps, eval_steps = (2, 2) if smoke else (10, 20)
    spe = min(math.ceil(10000 / batch), args.limit_steps or 10**9)
    every = max(1, round(900 / REFERENCE_STEPS_PER_EPOCH * spe))
    second = max(1, round(1200 / REFERENCE_STEPS_PER_EPOCH * spe))
    half = args.epochs // 2
    limits = {"val_limit": 64, "test_limit": 64} if smoke else {}
    train = {
        "mode": "pgd", "epochs": args.epochs, "batch_size": batch,
        "optimizer": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"kind": "multistep", "milestones": [max(1, args.epochs // 2), max(1, args.epochs * 3 // 4)]},
        "attack": {"eps": "8/255", "step": "2/255", "steps": attack_steps},
        "eval": {"every": 1, "batch_size": 512, **limits, "attack": {"kind": "pgd", "steps": eval_steps}},
        "select": "best", "progress_every_steps": 200,
        "max_steps_per_epoch": args.limit_steps,
        "precision": "bf16" if args.device == "cuda" else "fp32",
    }
    sparsity = {"update_every": every, "second_update_every": second, "second_after_epoch": half}
    stages = [
        {"name": "dense", "type": "dense_warmup", **train},
        {"name": "flying_bird", "type": "rewire", "method": "flying_bird", "density": args.density, **train,
         "sparsity": sparsity},
        {"name": "flying_bird_plus", "type": "rewire", "method": "flying_bird_plus", "density": args.density, **train,
         "sparsity": {**sparsity, "adaptive": {"start_epoch": half}}},
    ]
    for name in ("dense", "flying_bird", "flying_bird_plus"):
        stages.append({"name": f"eval_{name}", "type": "evaluate", "input": name,
                       "attack": {"kind": "pgd", "steps": eval_steps},
                       **({"train_limit": 64, "val_limit": 64, "test_limit": 64} if smoke else {})})
    return {"run": {"name": "flying_bird_reduced", "seed": args.seed, "device": args.device},
            "data": {"dataset": "npz", "path": str(args.data), "augment": "crop_flip", "norm_stats": "cifar10"},
            "model": {"arch": "preact_resnet18"}, "stages": stages}


def summarize(run_dir: Path) -> list[dict]:
    def rec(name: str) -> dict:
        return json.loads((run_dir / name / "stage.json").read_text())

    dense = rec("dense")["flops"]
    rows = []
    for name in ("dense", "flying_bird", "flying_bird_plus"):
        r, ev = rec(name), rec(f"eval_{name}")["metrics"]
        m, fl = r["metrics"], r["flops"]
        rows.append({
            "setting": name, "RA_best": m.get("RA_best"), "RA_final": m.get("RA_final"),
            "overfitting": m.get("RA_diff"), "SA_best": m.get("SA_best"), "SA_final": m.get("SA_final"),
            "gap_final": ev.get("robust_gap_final", ev.get("robust_gap")),
            "gap_running_train": ev.get("robust_gap_running_train"),
            "overfitting_measured": ev.get("robust_overfitting_measured"),
            "density": (r.get("sparsity") or {}).get("final_density", 1.0),
            "ever_active": (r.get("sparsity") or {}).get("ever_active"),
            "updates": (r.get("sparsity") or {}).get("prune_grow_updates", 0),
            "inference_saved": 1 - fl["inference"]["sparse_flops"] / dense["inference"]["dense_flops"],
            "train_saved_corrected": 1 - fl["training"]["corrected"] / dense["training"]["corrected"],
            "train_saved_paper": 1 - fl["training"]["paper"] / dense["training"]["paper"],
        })
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) and abs(value) < 1.0001 else f"{value:.2f}" \
        if isinstance(value, float) else str(value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--limit-steps", type=int, default=None, help="smoke run: steps per epoch (and small everything)")
    ap.add_argument("--density", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "flying_bird_reduced")
    args = ap.parse_args()

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
        print(" | ".join(_fmt(row[c]) for c in cols))
    d, fb, fbp = rows
    print(f"RA best/final: dense {_fmt(d['RA_best'])}/{_fmt(d['RA_final'])}, FB {_fmt(fb['RA_best'])}/"
          f"{_fmt(fb['RA_final'])}, FB+ {_fmt(fbp['RA_best'])}/{_fmt(fbp['RA_final'])}; training FLOPs saved "
          f"FB {fb['train_saved_corrected']:.1%}, FB+ {fbp['train_saved_corrected']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
