"""Shared machinery of the reduced-scale reproduction scripts (benchmarks/*_reduced.py).

Each script compares models trained with equal epochs on the same data and seed. Every model is its
own run of the real engine (`python -m pipeline run CFG --run-dir OUT/<key> -q`): its training stages,
then one `evaluate` stage. `pipeline.reporting.compare.compare_runs` reads the runs back (RA best / final / diff,
SA, training and inference FLOPs, robust gap, corruption mean) and writes OUT/<script>.md (+ .csv,
.json); this module adds FLOPs saved against the first run (dense), a few stage-specific figures, and
one verdict line per paper claim computed from those numbers.

Runs are keyed by model (`dense`, `robust_bird`, ...) and built by the same functions in every script,
so scripts given the same `--out`, `--epochs`, `--seed`, `--data` and `--arch` share their identical
runs (the engine skips finished stages and resumes cut-off ones).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-subset.npz"
REFERENCE_STEPS_PER_EPOCH = 352  # the papers' CIFAR: 45k training images at batch 128
SUBSET_TRAIN_IMAGES = 10_000
MATCH_TOLERANCE_PP = 1.0  # "matches dense" = at most this many percentage points below it

SMOKE_BATCH = 32
SMOKE_EVAL_LIMIT = 64
SMOKE_CORRUPTION_LIMIT = 10


# ---------------------------------------------------------------------------------------------------
# Command line


def parser(doc: str, script: str, *, epochs: int, arch: str) -> argparse.ArgumentParser:
    """The flags every reduced-scale script has; a script adds its own."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(doc.splitlines()[1:]))
    ap.add_argument("--epochs", type=int, default=epochs, help="training epochs of every compared model")
    ap.add_argument("--limit-steps", type=int, default=None,
                    help="smoke run: N steps per epoch, batch 32, PGD-2, 64-image evaluations, tiny corruption sets")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 subset .npz (x_train, y_train, ...)")
    ap.add_argument("--arch", default=arch, help=f"model architecture (default {arch}; see `pipeline models`)")
    ap.add_argument("--sizes", type=_sizes, default=None, metavar="TRAIN,VAL,TEST",
                    help="train on a class-balanced subset of --data with this many train/val/test images, written "
                    "once to OUT/data/ (default: the whole file); shrinks the splits themselves, so every "
                    "model, FB+'s per-epoch val signal included, sees the same full (smaller) splits")
    ap.add_argument("--train-attack-steps", type=int, default=None, metavar="K",
                    help="PGD-K adversarial training with step 2.5*eps/K (default: PGD-10, step 2/255)")
    ap.add_argument("--eval-attack-steps", type=int, default=None, metavar="N",
                    help="PGD-N for the per-epoch and the final evaluations (default 20)")
    ap.add_argument("--batch-size", type=int, default=128,
                    help="training batch of every model (default 128, the papers'; a small training set "
                    "at batch 128 gets too few SGD steps to fit anything)")
    ap.add_argument("--augment", choices=["crop_flip", "none"], default="crop_flip",
                    help="training augmentation (default crop_flip, the papers')")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / script,
                    help=f"one run directory per model below it, plus {script}.md|csv|json (the comparison) and "
                    f"{script}.summary.json")
    ap.set_defaults(script=script)
    return ap


def sw_parser(doc: str, script: str) -> argparse.ArgumentParser:
    """The common flags plus --density, for the Sparsity Winning Twice comparisons."""
    ap = parser(doc, script, epochs=40, arch="preact_resnet18")
    ap.add_argument("--density", type=float, default=0.2,
                    help="kept fraction of every sparse model (0.2 = 80%% sparsity)")
    return ap


def parse(ap: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the common flags; `device` comes back resolved to cpu or cuda."""
    args = ap.parse_args(argv)
    if args.epochs <= 0:
        ap.error(f"--epochs must be > 0, got {args.epochs}")
    for flag in ("limit_steps", "train_attack_steps", "eval_attack_steps", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            ap.error(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    density = getattr(args, "density", None)
    if density is not None and (not math.isfinite(density) or not 0 < density <= 1):
        ap.error(f"--density must be in (0, 1], got {density}")
    if not args.data.is_file():
        ap.error(f"--data: {args.data} not found. These scripts train on the CIFAR-10 subset (default "
                 f"{DEFAULT_DATA}); pass --data PATH to an .npz with x_train/y_train/x_val/y_val/x_test/y_test")
    args.data = args.data.resolve()
    args.train_images = SUBSET_TRAIN_IMAGES
    if args.sizes is not None:
        args.data = subset_npz(args.data, args.sizes, args.out / "data", ap)
        args.train_images = args.sizes[0]
    args.device = resolve_device(args.device)
    return args


def _sizes(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected three positive image counts TRAIN,VAL,TEST, got {text!r}")
    return values  # type: ignore[return-value]


def subset_npz(source: Path, sizes: tuple[int, int, int], out_dir: Path, ap: argparse.ArgumentParser) -> Path:
    """`source` cut to `sizes` (train, val, test) class-balanced images per split (the pipeline's own
    balanced rule, seed 0), written atomically once; later calls (a resumed run) reuse the file, so a
    resumed run trains on the very same images."""
    import numpy as np
    import torch

    from pipeline.data.check import read_npz_arrays
    from pipeline.data.splits import subset_indices
    from pipeline.engine import store
    from pipeline.engine.errors import DataError

    target = out_dir / f"{source.stem}-{'-'.join(map(str, sizes))}.npz"
    if target.is_file():
        return target
    try:
        npz = read_npz_arrays(source)
    except DataError as exc:
        ap.error(f"--data: {exc}")
    arrays: dict[str, np.ndarray] = {"label_names": np.array(npz.class_names)}
    for split, n in zip(("train", "val", "test"), sizes):
        if split not in npz.labels:
            ap.error(f"--sizes: {source} has no {split} split")
        y = npz.labels[split]
        if n > len(y):
            ap.error(f"--sizes: {split} {n} exceeds the {len(y)} {split} images of {source}")
        try:
            keep = subset_indices(torch.from_numpy(y), n / len(y), "balanced", 0, len(npz.class_names)).numpy()
        except DataError as exc:
            ap.error(f"--sizes: {split}: {exc}")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = npz.images[split][keep], y[keep]
    with store.atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return target


def resolve_device(choice: str) -> str:
    if choice != "auto":
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def smoke(args: argparse.Namespace) -> bool:
    return args.limit_steps is not None


# ---------------------------------------------------------------------------------------------------
# Stage blocks


def milestones(epochs: int, *fractions: float) -> list[int]:
    """lr drops at these fractions of training (at least epoch 1, as the engine wants positive epochs).
    A drop that would fall on or after the last epoch never fires, and the engine refuses a written one,
    so a run too short for it (the one-epoch smoke run) has none."""
    return sorted({m for f in fractions if (m := max(1, math.floor(epochs * f + 1e-9))) < epochs})


def steps_like(reference_steps: int, args: argparse.Namespace, train_images: int | None = None) -> int:
    """A step interval of the papers' CIFAR runs as the same number of epochs here (of `train_images`,
    default the run's training split). A smoke run updates every step so that the update path runs at all."""
    if smoke(args):
        return 1
    per_epoch = math.ceil((train_images or args.train_images) / batch_size(args))
    return max(1, round(reference_steps / REFERENCE_STEPS_PER_EPOCH * per_epoch))


def batch_size(args: argparse.Namespace) -> int:
    return SMOKE_BATCH if smoke(args) else args.batch_size


def eval_steps(args: argparse.Namespace) -> int:
    return 2 if smoke(args) else (args.eval_attack_steps or 20)


def train_attack(args: argparse.Namespace) -> dict[str, Any]:
    """PGD at 8/255: 10 steps of 2/255 (the papers'), or K steps of 2.5*eps/K (Madry et al.'s rule, so
    that a short attack can still cross the eps ball); smoke runs take 2 steps."""
    if smoke(args):
        return {"eps": "8/255", "step": "2/255", "steps": 2}
    k = args.train_attack_steps
    if k is None:
        return {"eps": "8/255", "step": "2/255", "steps": 10}
    return {"eps": "8/255", "step": f"20/{255 * k}", "steps": k}  # 2.5 * 8/255 / k, exact


def training(args: argparse.Namespace, *, mode: Literal["clean", "fast", "pgd"] = "pgd",
             lr_drops: tuple[float, ...] = (1 / 2, 3 / 4), robust_eval: bool = True,
             select: Literal["best", "final"] = "best") -> dict[str, Any]:
    """The training keys shared by every compared model: SGD 0.1 / 0.9 / 5e-4, batch 128 (--batch-size), PGD-10 (8/255,
    2/255) when adversarial, per-epoch val/test evaluation (PGD-20 RA unless `robust_eval` is off)."""
    limits = {"val_limit": SMOKE_EVAL_LIMIT, "test_limit": SMOKE_EVAL_LIMIT} if smoke(args) else {}
    ev: dict[str, Any] = {"every": 1, "batch_size": 512, **limits, "robust": robust_eval}
    if robust_eval:
        ev["attack"] = {"kind": "pgd", "steps": eval_steps(args)}
    block: dict[str, Any] = {
        "mode": mode, "epochs": args.epochs, "batch_size": batch_size(args),
        "optimizer": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"kind": "multistep", "milestones": milestones(args.epochs, *lr_drops)},
        "eval": ev, "select": select, "progress_every_steps": 200, "max_steps_per_epoch": args.limit_steps,
        "precision": "bf16" if args.device == "cuda" else "fp32",
    }
    if mode == "pgd":
        block["attack"] = train_attack(args)
    elif mode == "fast":  # FGSM-RS: one step of 1.25 * eps (a PGD step here is a config error)
        block["attack"] = {"eps": "8/255"}
    return block


def evaluate_stage(args: argparse.Namespace, input_stage: str, *, splits: list[str] | None = None,
                   corruptions: dict[str, Any] | None = None, checkpoints: str = "both") -> dict[str, Any]:
    """The run's judging stage: PGD-20 SA/RA (canonical gap on the non-augmented train split), and
    corruption accuracy when `corruptions` is given (smoke: 10 images per corruption x severity)."""
    attack: dict[str, Any] = {"kind": "pgd", "steps": eval_steps(args)}
    if splits:
        attack["splits"] = splits
    st: dict[str, Any] = {"name": "evaluate", "type": "evaluate", "input": input_stage, "attack": attack,
                          "checkpoints": checkpoints}
    if smoke(args):
        st.update(train_limit=SMOKE_EVAL_LIMIT, val_limit=SMOKE_EVAL_LIMIT, test_limit=SMOKE_EVAL_LIMIT)
    if corruptions is not None:
        corr = dict(corruptions)
        if smoke(args):
            corr["limit"] = min(corr.get("limit") or SMOKE_CORRUPTION_LIMIT, SMOKE_CORRUPTION_LIMIT)
        st["corruptions"] = corr
    return st


# ---------------------------------------------------------------------------------------------------
# The models of Sparsity Winning Twice (used by several scripts, so built once here)


@dataclass(frozen=True)
class Model:
    key: str  # run directory and run name
    label: str  # what tables and verdicts call it
    stages: list[dict[str, Any]]


def dense_pgd_at(args: argparse.Namespace) -> Model:
    """Dense PGD-AT, lr x0.1 at 1/2 and 3/4 of training (SW main_adv: 100, 150 of 200)."""
    return Model("dense", "dense", [{"name": "dense", "type": "dense_warmup", **training(args)},
                                    evaluate_stage(args, "dense")])


def robust_bird(args: argparse.Namespace, *, density: float, window: int = 5, threshold: float = 0.08) -> Model:
    """Early-bird search (clean, at most E epochs, lr x0.1 at 1/4 and 3/4, global magnitude masks over
    the conv weights each epoch), the ticket cut by global |w| over conv + linear, then PGD-AT of the
    sparse ticket for E epochs, lr x0.1 at 1/4 and 3/4 (RB: 50, 150 of 200)."""
    rb_drops = (1 / 4, 3 / 4)
    search = {"name": "early_bird", "type": "early_bird", **training(args, mode="clean", lr_drops=rb_drops),
              "density": density, "window": window, "threshold": threshold,
              "criterion": {"pruner": "global_magnitude", "scope": "conv_linear"}, "on_no_emergence": "use_last"}
    search.pop("select")  # the search always hands on its last epoch
    ticket = {"name": "robust_bird", "type": "finetune", "input": "early_bird", **training(args, lr_drops=rb_drops)}
    return Model("robust_bird", "RB", [search, ticket, evaluate_stage(args, "robust_bird")])


def flying_bird(args: argparse.Namespace, *, density: float, plus: bool = False) -> Model:
    """Flying Bird (+) from scratch with the dense model's recipe; the 900 / 1200-step update intervals
    of the reference become the same number of epochs here; the second interval and FB+ start at half."""
    half = args.epochs // 2
    sparsity: dict[str, Any] = {"update_every": steps_like(900, args), "second_update_every": steps_like(1200, args),
                                "second_after_epoch": half}
    if plus:
        sparsity["adaptive"] = {"start_epoch": half}
    key = "flying_bird_plus" if plus else "flying_bird"
    train = training(args)
    if plus:  # FB+ reads its signals on the whole val split (the engine refuses val_limit), smoke runs too
        train["eval"].pop("val_limit", None)
    stage = {"name": key, "type": "rewire", "method": key, "density": density, **train,
             "sparsity": sparsity}
    return Model(key, "FB+" if plus else "FB", [stage, evaluate_stage(args, key)])


# ---------------------------------------------------------------------------------------------------
# Running


class RunFailed(RuntimeError):
    def __init__(self, key: str, returncode: int, run_dir: Path):
        super().__init__(f"{key}: pipeline exited {returncode}; see {run_dir / 'run.log'}")
        self.returncode = returncode


def run_config(args: argparse.Namespace, model: Model) -> dict[str, Any]:
    return {"run": {"name": model.key, "seed": args.seed, "device": args.device},
            "data": {"dataset": "npz", "path": str(args.data), "augment": args.augment, "norm_stats": "cifar10"},
            "model": {"arch": args.arch}, "stages": model.stages}


def run_models(args: argparse.Namespace, models: list[Model],
               prepare: Callable[[Model], None] | None = None) -> list[Path]:
    """Run (or resume) each model through the engine, one after the other; their run directories.
    `prepare(model)` runs just before a model's engine run (e.g. to seed its run directory)."""
    cfg_dir = args.out / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if smoke(args) and args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")  # a smoke run shares a small machine; one thread is enough
    run_dirs = []
    for i, model in enumerate(models, 1):
        cfg_path = cfg_dir / f"{model.key}.json"  # JSON is YAML
        cfg_path.write_text(json.dumps(run_config(args, model), indent=1))
        run_dir = args.out / model.key
        print(f"[{i}/{len(models)}] {model.label}: {run_dir}", flush=True)
        if prepare is not None:
            prepare(model)
        proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(cfg_path), "--run-dir", str(run_dir),
                               "-q"], cwd=REPO, env=env)
        if proc.returncode != 0:
            raise RunFailed(model.key, proc.returncode, run_dir)
        run_dirs.append(run_dir)
    return run_dirs


# ---------------------------------------------------------------------------------------------------
# Reading the runs back


def stage_extras(run_dir: Path) -> dict[str, Any]:
    """Figures `compare` does not tabulate: the early-bird emergence epoch, the DST final density,
    ever-active fraction and update count, the measured overfitting and the corruption details."""
    from pipeline.engine.rundir import RunDir
    from pipeline.metrics.evaluation import EvaluationMetrics
    from pipeline.sparsity.record import SparsityRecord

    run = RunDir(run_dir)
    out: dict[str, Any] = {}
    for st in run.finished():
        eb = st.section("early_bird")
        if eb is not None:
            out["eb_epoch"] = eb["epoch"] if eb["emerged"] else f"none ({eb['epochs_run']})"
        sp = st.section(SparsityRecord)
        if st.type == "rewire" and sp is not None:
            out.update(final_density=sp.final_density, ever_active=sp.ever_active, updates=sp.prune_grow_updates)
    ev = run.evaluate_stage()
    if ev is not None:
        m = ev.section(EvaluationMetrics)
        out["overfitting_measured"] = m.robust_overfitting_measured
        if m.corruption is not None:
            # the 15- and 19-type means are compare's own columns (pipeline.corruptions.means)
            out.update(corruption_clean=m.corruption.get("clean_acc"), corruption_images=m.corruption.get("n"))
    return out


def summarize(args: argparse.Namespace, models: list[Model], run_dirs: list[Path]) -> tuple[str, list[dict]]:
    """compare_runs over the runs (first = reference) -> (its markdown, one flat row per run), with FLOPs
    relative to the first run and the stage extras. Also writes OUT/<script>.md|csv|json, <script>.summary.json."""
    from pipeline.reporting.compare import compare_runs

    text, data = compare_runs(run_dirs, out=table_path(args), labels=[m.label for m in models])
    rows = []
    for model, run_dir, row in zip(models, run_dirs, data["rows"]):
        flat = {"key": model.key, **{k: v for k, v in row.items() if k != "details"}, **row.get("details", {})}
        flat.update(stage_extras(run_dir))
        rows.append(flat)
    ref = rows[0]
    for r in rows:
        r["train_flops_rel"] = ratio(r.get("train_flops_corrected"), ref.get("train_flops_corrected"))
        r["train_saved_corrected"] = _saved(r.get("train_flops_corrected"), ref.get("train_flops_corrected"))
        r["train_saved_paper"] = _saved(r.get("train_flops_paper"), ref.get("train_flops_paper"))
        r["inference_saved"] = _saved(r.get("inference_flops"), r.get("inference_flops_dense"))
    (args.out / f"{args.script}.summary.json").write_text(json.dumps(rows, indent=1, default=str))
    return text, rows


def table_path(args: argparse.Namespace) -> Path:
    """Where compare's table goes (named after the script, so scripts may share an --out)."""
    return args.out / f"{args.script}.md"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _saved(a: float | None, b: float | None) -> float | None:
    r = ratio(a, b)
    return None if r is None else 1.0 - r


# ---------------------------------------------------------------------------------------------------
# Printing and verdicts


def pct(value: Any) -> str:
    return "—" if value is None else f"{value:.1%}"


def three(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}"


def drop_empty_columns(md: str, empty: str = "—") -> str:
    """A markdown table (as compare prints it) without the columns no row has a value in."""
    lines = md.splitlines()
    cells = [line.strip().strip("|").split(" | ") for line in lines]
    keep = [j for j in range(len(cells[0])) if j == 0 or any(row[j].strip() != empty for row in cells[2:])]
    return "\n".join("| " + " | ".join(row[j].strip() for j in keep) + " |" for row in cells)


@dataclass(frozen=True)
class Col:
    key: str
    title: str
    show: Callable[[Any], str] | None = None  # default: pipeline.reporting.format.fmt


def table(rows: list[dict], cols: Iterable[Col]) -> str:
    """Markdown table of `cols` (columns that no row has are left out)."""
    from pipeline.reporting.format import fmt, md_table

    cols = [c for c in cols if c.key == "label" or any(r.get(c.key) is not None for r in rows)]
    body = [[(c.show or fmt)(r.get(c.key)) for c in cols] for r in rows]
    return md_table([c.title for c in cols], body, ["l"] + ["r"] * (len(cols) - 1))


def print_report(args: argparse.Namespace, heading: str, compare_text: str, rows: list[dict],
                 extra_cols: Iterable[Col]) -> None:
    """The heading, compare's headline table, then FLOPs saved and the extras per run."""
    note = f" (smoke: {args.limit_steps} steps/epoch)" if smoke(args) else ""
    print(f"{args.epochs} epochs{note}, {args.arch}, seed {args.seed}, {heading}; runs in {args.out}")
    print(drop_empty_columns(compare_text.split("\n\n", 1)[0]))
    print()
    cols = [Col("label", "run"), Col("train_saved_corrected", "train FLOPs saved", pct),
            Col("train_saved_paper", "(paper count)", pct), Col("inference_saved", "inference FLOPs saved", pct),
            *extra_cols]
    print(table(rows, cols))
    print(f"(full table with definitions: {table_path(args)})")


def headline(rows: list[dict]) -> str:
    """One line with every run's RA best/final, gap, overfitting and FLOPs saved against the first."""
    from pipeline.reporting.format import fmt

    def each(key: str) -> str:
        return ", ".join(f"{r['label']} {fmt(r.get(key))}" for r in rows)

    saved = ", ".join(f"{r['label']} {pct(r.get('train_saved_corrected'))} (paper count "
                      f"{pct(r.get('train_saved_paper'))}) / {pct(r.get('inference_saved'))}" for r in rows[1:])
    ra = ", ".join(f"{r['label']} {fmt(r.get('ra_best'))}/{fmt(r.get('ra_final'))}" for r in rows)
    return (f"RA best/final: {ra}; gap {each('robust_gap')}; overfitting {each('ra_diff')}; "
            f"FLOPs saved training / inference: {saved}")


@dataclass(frozen=True)
class Claim:
    title: str
    holds: dict[str, bool | None]  # per compared run
    line: str


def claim(args: argparse.Namespace, rows: list[dict], key: str, title: str, question: str, *,
          better: Literal["lower", "higher"], tolerance: float = 0.0, compared: list[dict] | None = None,
          show: Callable[[Any], str] | None = None) -> Claim:
    """Does each compared run beat the first row (the reference) on `key`? `better` says which way;
    `tolerance` lets a run fall that far behind and still count (0: strictly better)."""
    from pipeline.reporting.format import fmt, num

    show = show or fmt
    ref = rows[0]
    compared = rows[1:] if compared is None else compared
    ref_v = num(ref.get(key))
    holds: dict[str, bool | None] = {}
    for r in compared:
        v = num(r.get(key))
        if v is None or ref_v is None:
            holds[r["label"]] = None
        else:
            margin = (v - ref_v) if better == "higher" else (ref_v - v)
            holds[r["label"]] = margin > -tolerance if tolerance else margin > 0
    values = ", ".join(f"{r['label']} {show(r.get(key))}" for r in compared)
    line = f"{title}: {ref['label']} {show(ref.get(key))} vs {values} -> {question}: {_word(holds)} {scale(args)}"
    return Claim(title, holds, line)


def _word(holds: dict[str, bool | None]) -> str:
    yes = [k for k, v in holds.items() if v is True]
    no = [k for k, v in holds.items() if v is False]
    na = [k for k, v in holds.items() if v is None]
    if not yes and not no:
        return "n/a (not measured)"
    if not no:
        word = "yes" + (f" (all {len(yes)})" if len(yes) > 1 else "")
    elif not yes:
        word = "no"
    else:
        word = f"partly (yes: {', '.join(yes)}; no: {', '.join(no)})"
    return word + (f"; n/a: {', '.join(na)}" if na else "")


def scale(args: argparse.Namespace) -> str:
    return "at smoke scale (not evidence)" if smoke(args) else "at this scale"


def verdict(args: argparse.Namespace, paper: str, claims: list[Claim]) -> str:
    """One line: whether the paper's direction holds, counted over (compared run, claim) pairs."""
    pairs = [v for c in claims for v in c.holds.values()]
    yes, known = sum(v is True for v in pairs), sum(v is not None for v in pairs)
    if known == 0:
        word = "n/a"
    elif yes == known:
        word = "yes"
    elif yes == 0:
        word = "no"
    else:
        word = "partly"
    per = "; ".join(f"{c.title.split(' (')[0]} {sum(v is True for v in c.holds.values())}/"
                    f"{sum(v is not None for v in c.holds.values())}" for c in claims)
    return f"verdict: the direction of {paper} holds {scale(args)}: {word} ({yes}/{known} run-claim pairs: {per})"


def sw_claims(args: argparse.Namespace, rows: list[dict]) -> list[Claim]:
    """The claims of Sparsity Winning Twice against dense PGD-AT (rows[0]), for every other row."""
    return [
        claim(args, rows, "ra_diff", "robust overfitting (RA best - final, pp)", "sparsity reduces overfitting",
              better="lower"),
        claim(args, rows, "robust_gap", "robust generalization gap (train RA - test RA, pp)",
              "sparsity narrows the gap", better="lower"),
        claim(args, rows, "ra_final", "RA final (%)", "sparse ends more robust", better="higher"),
        claim(args, rows, "ra_best", "RA best (%)", f"sparse matches dense (within {MATCH_TOLERANCE_PP:g} pp)",
              better="higher", tolerance=MATCH_TOLERANCE_PP),
        claim(args, rows, "train_flops_rel", "training FLOPs (corrected, relative to dense)",
              "sparse training is cheaper", better="lower", show=lambda v: "—" if v is None else f"{v:.2f}"),
    ]


SW_EXTRA_COLS = (Col("eb_epoch", "EB epoch"), Col("final_density", "final density", three),
                 Col("ever_active", "ever active", pct), Col("updates", "updates"),
                 Col("overfitting_measured", "overfitting (ckpts)"))


def main_guard(body: Callable[[], int]) -> int:
    """Run a script body; a failed engine run ends it with the engine's exit code and where to look."""
    try:
        return body()
    except RunFailed as exc:
        print(str(exc), file=sys.stderr)
        return exc.returncode


def compare_sw(args: argparse.Namespace, models: list[Model], paper: str,
               before: Callable[[list[Path]], None] | None = None) -> int:
    """Run dense (first) and the sparse models, print the tables, one line per SW claim and the verdict;
    `before` gets the run directories to print something ahead of the tables."""

    def body() -> int:
        run_dirs = run_models(args, models)
        if before is not None:
            before(run_dirs)
        text, rows = summarize(args, models, run_dirs)
        print_report(args, f"density {args.density}", text, rows, SW_EXTRA_COLS)
        print(headline(rows))
        claims = sw_claims(args, rows)
        for c in claims:
            print(c.line)
        print(verdict(args, paper, claims))
        return 0

    return main_guard(body)
