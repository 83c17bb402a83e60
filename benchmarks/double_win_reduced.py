"""Double-Win transfer at reduced scale: IMP tickets vs dense after standard and adversarial fine-tuning (issue 10, 7c).

The claim of "Double-Win Lottery Tickets" (ICML 2022, spec §4): a subnetwork found by IMP on the
pre-training task, transferred to another task, matches the dense pre-trained model transferred the
same way on standard accuracy (SA) after standard fine-tuning and on SA and robust accuracy (RA) after
adversarial fine-tuning. Both tasks come from the CIFAR-10 subset (/work/shared/data): the pre-training
task A is classes 0 .. K-1 (--split-classes K, default 5: airplane .. deer), the downstream task B is
the other classes (dog .. truck), relabelled from 0. The two .npz files are written under OUT/data.
B's test split is its 1k-test images plus every val-pool image not kept for B's val (--transfer-val),
so the transferred models are judged on more images than A's test split alone would give.

Protocol (GPU-scale defaults follow spec §1.2 / §4 where it gives a value):
- `pretrain` (dense, task A): PGD-AT (--pretrain-mode pgd, PGD-10 8/255 step 2/255; fast = FGSM-RS at
  step 1.25 eps), SGD 0.1 / 0.9 / 5e-4, batch 128, lr x0.1 at 1/2 and 3/4, best epoch on val RA.
- `tickets` (task A): adversarial IMP with rewinding to the pre-trained weights, conv weights only,
  round 1 = OMP at 20% of the pre-trained magnitudes (prune_before_training), each round PGD-3 AT
  (8/255, step 16/765) for --imp-epochs at a constant lr 0.01 / wd 1e-4, 20% of the survivors pruned
  per round (round k: sparsity 1 - 0.8^k); ticket k = the pre-trained weights under mask k.
- transfer to B, each model its own run: a new dense head, the ticket's mask kept on the backbone.
  Standard fine-tuning (DW main_std_eval: batch 64, lr 0.01, wd 5e-4, lr x0.1 at 1/3 and 2/3 of
  --std-epochs, best epoch on val SA); adversarial fine-tuning (DW main_adv_eval: PGD-10, batch 128,
  lr 0.1, wd 5e-4, lr x0.1 at 1/2 and 3/4 of --epochs, best epoch on val RA). Then an `evaluate`
  stage: test SA and PGD-20 RA of the kept checkpoint on B's whole test split.
The dense pre-trained model is transferred the same two ways. Every run holds the `pretrain`,
`tickets` and `evaluate_source` stages of OUT/source (copied, hard links where possible, before its
first run; identical fingerprints, so the engine skips them) and its own transfer and evaluate stages.

Prints compare's table of the transfer runs, the double-win table (pipeline.reporting.double_win: a
ticket wins twice when none of std SA, adv SA, adv RA falls more than --tolerance pp below dense),
one line per criterion and the verdict. OUT/double_win_reduced.tickets.json has one row per ticket
(std_sa, std_ra, adv_sa, adv_ra), for `benchmarks/seeds_summary.py --metrics std_sa,adv_sa,adv_ra`.
Meant for a GPU (preact_resnet18; 10 IMP rounds; dense and 3 tickets, each fine-tuned both ways: 8 transfer runs):

    python benchmarks/double_win_reduced.py --device cuda
A reduced CPU protocol (the one in benchmarks/RESULTS.md) shortens every phase and uses PGD-3:

    python benchmarks/double_win_reduced.py --arch small_cnn --pretrain-epochs 8 --imp-epochs 2 \\
        --ticket-rounds 2,3,4 --std-epochs 6 --epochs 6 --adv-steps 3 --epoch-eval-steps 10 \\
        --val-limit 500 --test-limit 200 --transfer-fraction 0.5 --seed S --device cpu --out runs/dw_seedS
Smoke run (`--limit-steps` also shrinks the batch to 32, PGD to 2 steps, evaluations to 64 images):

    python benchmarks/double_win_reduced.py --arch small_cnn --epochs 1 --std-epochs 1 --pretrain-epochs 1 \\
        --imp-epochs 1 --ticket-rounds 1,2 --limit-steps 2 --device cpu
Re-running with the same --out continues a cut-off run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

import reduced_common as rc

SCRIPT = "double_win_reduced"
SOURCE_KEY = "source"
SOURCE_STAGES = ("pretrain", "tickets", "evaluate_source")
METRIC_TITLES = {"std_sa": "SA after standard fine-tuning (%)", "adv_sa": "SA after adversarial fine-tuning (%)",
                 "adv_ra": "RA after adversarial fine-tuning (%)"}


# ---------------------------------------------------------------------------------------------------
# Command line


def _rounds(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated IMP rounds such as 2,6,10, got {text!r}")
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected IMP rounds >= 1, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = rc.parser(__doc__, SCRIPT, epochs=100, arch="preact_resnet18")
    ap.add_argument("--std-epochs", type=_positive, default=150,
                    help="standard fine-tuning epochs (DW main_std_eval: 150); --epochs is the adversarial one's (100)")
    ap.add_argument("--std-lr", type=float, default=0.01, help="standard fine-tuning lr (DW code default 0.01)")
    ap.add_argument("--pretrain-epochs", type=_positive, default=200, help="dense pre-training epochs on task A")
    ap.add_argument("--pretrain-mode", choices=["pgd", "fast"], default="pgd",
                    help="pre-training: PGD-AT (--adv-steps) or fast AT (FGSM-RS, step 1.25 eps)")
    ap.add_argument("--imp-epochs", type=_positive, default=30, help="training epochs of every IMP round (DW: 30)")
    ap.add_argument("--imp-steps", type=_positive, default=3, help="PGD steps of IMP training (DW: 3)")
    ap.add_argument("--prune-fraction", type=float, default=0.2, help="fraction of the survivors pruned per round")
    ap.add_argument("--ticket-rounds", type=_rounds, default=[2, 6, 10],
                    help="IMP rounds whose tickets are transferred (default 2,6,10: 36%%, 73.8%%, 89.3%% sparsity)")
    ap.add_argument("--adv-steps", type=_positive, default=10,
                    help="PGD steps of PGD pre-training and adversarial fine-tuning (DW transfer: 10; step 2/255 "
                         "at 10 or more steps, else 2 eps / steps)")
    ap.add_argument("--epoch-eval-steps", type=_positive, default=20,
                    help="PGD steps of the per-epoch val/test RA that picks the best epoch (DW: 20)")
    ap.add_argument("--val-limit", type=_positive, default=None, help="per-epoch evaluation: first N val images")
    ap.add_argument("--test-limit", type=_positive, default=None,
                    help="per-epoch evaluation: first N test images (the final evaluate stage uses all)")
    ap.add_argument("--split-classes", type=_positive, default=5,
                    help="task A = classes 0..K-1 of the subset, task B = the rest (default 5)")
    ap.add_argument("--transfer-val", type=_positive, default=1000,
                    help="B's val images (class-balanced from B's val pool); the rest of the pool joins B's test")
    ap.add_argument("--transfer-fraction", type=float, default=1.0,
                    help="fraction of B's training images used (class-balanced; DW's data-limited 0.1 / 0.01)")
    ap.add_argument("--tolerance", type=float, default=0.0,
                    help="pp a ticket may fall below dense and still match (the paper: 0, 'not worse')")
    return ap


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = build_parser()
    args = rc.parse(ap, argv)
    if not 0 < args.prune_fraction < 1:
        ap.error(f"--prune-fraction must be in (0, 1), got {args.prune_fraction}")
    if not 0 < args.transfer_fraction <= 1:
        ap.error(f"--transfer-fraction must be in (0, 1], got {args.transfer_fraction}")
    if args.tolerance < 0:
        ap.error(f"--tolerance must be >= 0 pp, got {args.tolerance}")
    # common flags whose one value would contradict the per-phase reference settings: refused, not ignored
    if args.train_attack_steps is not None:
        ap.error("--train-attack-steps: this script sets each phase's PGD on its own; use --adv-steps "
                 "(pre-training, adversarial fine-tuning) and --imp-steps (IMP rounds)")
    if args.batch_size != 128:
        ap.error(f"--batch-size {args.batch_size}: each phase keeps the reference batch (128; standard "
                 "fine-tuning 64)")
    return args


# ---------------------------------------------------------------------------------------------------
# The two tasks


def _balanced_head(y: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of the first n // classes images of every class (in file order)."""
    classes = np.unique(y)
    per = n // len(classes)
    keep = np.zeros(len(y), dtype=bool)
    for c in classes:
        keep[np.flatnonzero(y == c)[:per]] = True
    return keep


def task_arrays(path: Path, k: int, transfer_val: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(A, B) as .npz arrays: A = classes < k with the file's own splits; B = the others relabelled from 0,
    val = `transfer_val` class-balanced images of B's val pool, test = B's test + the rest of that pool."""
    from pipeline.engine.errors import DataError

    try:
        with np.load(path) as f:
            d = {key: f[key] for key in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"--data {path}: cannot read it as .npz: {exc}") from exc
    for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        if key not in d:
            raise DataError(f"--data {path}: missing array {key!r}; the Double-Win split needs train, val and test")
    names = ([str(n) for n in d["label_names"]] if "label_names" in d
             else [str(c) for c in range(int(d["y_train"].max()) + 1)])
    if not 1 <= k < len(names):
        raise DataError(f"--split-classes {k}: the data has {len(names)} classes; A and B each need at least one")
    a: dict[str, np.ndarray] = {"label_names": np.array(names[:k])}
    b: dict[str, np.ndarray] = {"label_names": np.array(names[k:])}
    for split in ("train", "val", "test"):
        x, y = d[f"x_{split}"], d[f"y_{split}"]
        a[f"x_{split}"], a[f"y_{split}"] = x[y < k], y[y < k]
        b[f"x_{split}"], b[f"y_{split}"] = x[y >= k], y[y >= k] - k
    pool_x, pool_y = b["x_val"], b["y_val"]
    if transfer_val >= len(pool_y):
        raise DataError(f"--transfer-val {transfer_val}: task B's val pool holds only {len(pool_y)} images")
    keep = _balanced_head(pool_y, transfer_val)
    b["x_val"], b["y_val"] = pool_x[keep], pool_y[keep]
    b["x_test"] = np.concatenate([b["x_test"], pool_x[~keep]])
    b["y_test"] = np.concatenate([b["y_test"], pool_y[~keep]])
    return a, b


def _same_npz(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    try:
        with np.load(path) as f:
            return set(f.files) == set(arrays) and all(np.array_equal(f[k], v) for k, v in arrays.items())
    except (OSError, ValueError):
        return False


def write_tasks(args: argparse.Namespace) -> tuple[Path, Path]:
    """OUT/data/task_a.npz and task_b.npz; an existing file with the same arrays is left alone, so a
    resumed run's data files stay byte-identical."""
    from pipeline.engine import store

    a, b = task_arrays(args.data, args.split_classes, args.transfer_val)
    out = args.out / "data"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, arrays in (("task_a", a), ("task_b", b)):
        path = out / f"{name}.npz"
        if not _same_npz(path, arrays):
            with store.atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to the temp name
                    np.savez(fh, **arrays)
        paths.append(path)
    return paths[0], paths[1]


# ---------------------------------------------------------------------------------------------------
# Stage blocks


def attack(args: argparse.Namespace, steps: int) -> dict[str, Any]:
    """PGD at 8/255: step 2/255 from 10 steps on (SW / DW transfer), else 2 eps / steps (DW's PGD-3 16/765)."""
    steps = 2 if rc.smoke(args) else steps
    return {"eps": "8/255", "step": "2/255" if steps >= 10 else f"16/{255 * steps}", "steps": steps}


def block(args: argparse.Namespace, *, mode: str, epochs: int, lr: float, batch: int, wd: float,
          drops: tuple[float, ...] | None, steps: int | None = None, robust_eval: bool = True) -> dict[str, Any]:
    """reduced_common's training keys with this phase's epochs, optimizer, schedule and attacks."""
    b = rc.training(args, mode=mode, robust_eval=robust_eval, select="best")
    b["epochs"] = epochs
    if not rc.smoke(args):
        b["batch_size"] = batch
        b["eval"].update({k: v for k, v in (("val_limit", args.val_limit), ("test_limit", args.test_limit)) if v})
        if robust_eval:
            b["eval"]["attack"] = {"kind": "pgd", "steps": args.epoch_eval_steps}
    b["optimizer"] = {"lr": lr, "momentum": 0.9, "weight_decay": wd}
    steps_at = rc.milestones(epochs, *(drops or ()))  # none when the phase is too short (smoke)
    b["schedule"] = {"kind": "multistep", "milestones": steps_at} if steps_at else {"kind": "constant"}
    if mode == "pgd":
        b["attack"] = attack(args, steps or args.adv_steps)
    elif mode == "fast":
        b["attack"] = {"eps": "8/255", "step": "10/255", "steps": 1}  # FGSM-RS at 1.25 eps (spec §1)
    return b


def source_stages(args: argparse.Namespace) -> list[dict[str, Any]]:
    pretrain = {"name": "pretrain", "type": "dense_warmup",
                **block(args, mode=args.pretrain_mode, epochs=args.pretrain_epochs, lr=0.1, batch=128, wd=5e-4,
                        drops=(1 / 2, 3 / 4))}
    imp = block(args, mode="pgd", epochs=args.imp_epochs, lr=0.01, batch=128, wd=1e-4, drops=None, steps=args.imp_steps)
    imp.update(select="final", eval={**imp["eval"], "every": args.imp_epochs})
    tickets = {"name": "tickets", "type": "imp", "input": "pretrain", "method": "imp",
               "rounds": max(args.ticket_rounds), "prune_fraction": args.prune_fraction,
               "prune_before_training": True, "rewind_to": "pretrained", "ticket_weights": "rewind",
               "criterion": {"pruner": "global_magnitude", "scope": "conv"}, **imp}
    judge = rc.evaluate_stage(args, "pretrain", splits=["test"], checkpoints="selected")
    judge["name"] = "evaluate_source"
    return [pretrain, tickets, judge]


def transfer_stage(args: argparse.Namespace, task_b: Path, key: str, regime: str, round_k: int | None) -> dict:
    if regime == "std":
        train = block(args, mode="clean", epochs=args.std_epochs, lr=args.std_lr, batch=64, wd=5e-4,
                      drops=(1 / 3, 2 / 3), robust_eval=False)
    else:
        train = block(args, mode="pgd", epochs=args.epochs, lr=0.1, batch=128, wd=5e-4, drops=(1 / 2, 3 / 4))
    data = {"dataset": "npz", "path": str(task_b), "augment": args.augment, "norm_stats": "cifar10",
            "train_fraction": args.transfer_fraction, "subset": "balanced", "subset_seed": 0}
    st: dict[str, Any] = {"name": key, "type": "finetune", "input": "pretrain" if round_k is None else "tickets"}
    if round_k is not None:
        st["ticket_round"] = round_k
    return {**st, **train, "transfer": {"head": "new", "keep_mask": True, "data": data}}


def round_sparsity(args: argparse.Namespace, k: int) -> float:
    return 1.0 - (1.0 - args.prune_fraction) ** k


def models(args: argparse.Namespace, task_b: Path) -> tuple[rc.Model, list[rc.Model]]:
    """The source run and the transfer runs: (dense, ticket of each round) x (standard, adversarial)."""
    src = source_stages(args)
    source = rc.Model(SOURCE_KEY, "pre-training (task A)", src)
    out = []
    for k in [None, *args.ticket_rounds]:
        ticket = "dense" if k is None else f"r{k}"
        name = "dense" if k is None else f"IMP {round_sparsity(args, k):.1%}"
        for regime, word in (("std", "standard"), ("adv", "adversarial")):
            key = f"{ticket}_{regime}"
            stage = transfer_stage(args, task_b, key, regime, k)
            out.append(rc.Model(key, f"{name} {word}",
                                [*src, stage, rc.evaluate_stage(args, key, splits=["test"], checkpoints="selected")]))
    return source, out


# ---------------------------------------------------------------------------------------------------
# Running


def share_source(args: argparse.Namespace, model: rc.Model) -> None:
    """Give a transfer run the source run's finished stages before its first run (hard links: finished
    stage files are only ever replaced by rename, never written in place)."""
    if model.key == SOURCE_KEY:
        return
    for name in SOURCE_STAGES:
        src, dst = args.out / SOURCE_KEY / name, args.out / model.key / name
        if dst.exists() or not src.is_dir():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{name}.copying")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            shutil.copytree(src, tmp, copy_function=os.link)
        except OSError:  # another file system: plain copies
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
        tmp.rename(dst)


def ticket_rows(args: argparse.Namespace, rows: list[dict]) -> list[dict]:
    """One row per transferred model (dense, each ticket): test SA / RA after each fine-tuning."""
    by_key = {r["key"]: r for r in rows}
    out = []
    for k in [None, *args.ticket_rounds]:
        ticket = "dense" if k is None else f"r{k}"
        std, adv = by_key[f"{ticket}_std"], by_key[f"{ticket}_adv"]
        out.append({"key": ticket, "label": "dense" if k is None else f"IMP {round_sparsity(args, k):.1%}",
                    "round": k, "sparsity": 0.0 if k is None else round_sparsity(args, k),
                    "std_sa": std.get("test_sa"), "std_ra": std.get("test_ra"),
                    "adv_sa": adv.get("test_sa"), "adv_ra": adv.get("test_ra"),
                    "std_epoch": std.get("ft_best_epoch"), "adv_epoch": adv.get("ft_best_epoch"),
                    "test_n": std.get("test_n")})
    return out


RUN_COLUMNS = (rc.Col("label", "run"), rc.Col("test_sa", "test SA"), rc.Col("test_ra", "test RA"),
               rc.Col("test_n", "test images"), rc.Col("ft_best_epoch", "kept epoch"),
               rc.Col("density", "density", rc.three), rc.Col("inference_saved", "inference FLOPs saved", rc.pct))


def add_stage_figures(rows: list[dict]) -> None:
    """The kept epoch and test-image count of each transfer run, read from its own stages: compare's
    history columns (best epoch, RA / SA best) of a clean fine-tuning come from the nearest upstream
    stage with per-epoch RA, i.e. the pre-training on task A (pipeline/reporting/summary.py
    `_history_stage`), so they are not shown here."""
    from pipeline.engine.rundir import StageRecord

    for r in rows:
        r["ft_best_epoch"] = StageRecord(Path(r["run_dir"]), r["key"]).metrics.get("best_epoch")
        r["test_n"] = StageRecord(Path(r["run_dir"]), "evaluate").metrics.get("test_n")


def print_runs(args: argparse.Namespace, rows: list[dict]) -> None:
    note = f" (smoke: {args.limit_steps} steps/epoch)" if rc.smoke(args) else ""
    print(f"{args.arch}, seed {args.seed}{note}: task A = classes 0-{args.split_classes - 1}, task B = the rest; "
          f"tickets of IMP rounds {', '.join(map(str, args.ticket_rounds))}; runs in {args.out}")
    print(rc.table(rows, RUN_COLUMNS))
    print(f"(compare's table with FLOPs: {rc.table_path(args)})")


def source_line(args: argparse.Namespace) -> str:
    from pipeline.engine.rundir import RunDir
    from pipeline.metrics.evaluation import EvaluationMetrics

    run = RunDir(args.out / SOURCE_KEY)
    ev = run.stage("evaluate_source")
    m = ev.section(EvaluationMetrics) if ev is not None and ev.finished else None
    test = m.split("test") if m is not None else None
    fig = "not measured" if test is None else f"test SA {test.sa:.2f}, PGD RA {test.ra:.2f} (n={test.n})"
    return f"pre-trained dense model on task A: {fig}"


def double_win_claims(args: argparse.Namespace, table: dict, tickets: list[dict]) -> list[rc.Claim]:
    from pipeline.reporting.format import fmt

    dense = tickets[0]
    claims = []
    for metric, title in METRIC_TITLES.items():
        holds = {t["label"]: r["matches"][metric] for t, r in zip(tickets[1:], table["rows"])}
        values = ", ".join(f"{t['label']} {fmt(t.get(metric))}" for t in tickets[1:])
        tol = f"within {args.tolerance:g} pp of" if args.tolerance else "at least"
        line = (f"{title}: dense {fmt(dense.get(metric))} vs {values} -> ticket {tol} dense: "
                f"{rc._word(holds)} {rc.scale(args)}")
        claims.append(rc.Claim(title, holds, line))
    return claims


def main(argv: list[str] | None = None) -> int:
    from pipeline.engine.errors import PipelineError

    args = parse(argv)
    try:
        task_a, task_b = write_tasks(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    args.data = task_a  # every run's own data section is task A; the transfer stages name task B
    source, transfers = models(args, task_b)

    def body() -> int:
        from pipeline.reporting.double_win import double_win_from_rows, format_table
        from pipeline.reporting.format import fmt

        rc.run_models(args, [source])
        run_dirs = rc.run_models(args, transfers, prepare=lambda m: share_source(args, m))
        _, rows = rc.summarize(args, transfers, run_dirs)
        add_stage_figures(rows)
        tickets = ticket_rows(args, rows)
        (args.out / f"{SCRIPT}.tickets.json").write_text(json.dumps(tickets, indent=1, default=str))
        print_runs(args, rows)
        print(source_line(args))
        table = double_win_from_rows([(t["sparsity"], t["std_sa"], t["adv_sa"], t["adv_ra"]) for t in tickets[1:]],
                                     (tickets[0]["std_sa"], tickets[0]["adv_sa"], tickets[0]["adv_ra"]),
                                     args.tolerance)
        print()
        print(format_table(table))
        print(f"(test split of task B, evaluate stage: SA and PGD-{rc.eval_steps(args)} RA of the checkpoint "
              "kept by val SA (standard) / val RA (adversarial); standard-fine-tuned RA: "
              + ", ".join(f"{t['label']} {fmt(t['std_ra'])}" for t in tickets) + ")")
        claims = double_win_claims(args, table, tickets)
        for c in claims:
            print(c.line)
        print(rc.verdict(args, "Double-Win (IMP tickets match the dense pre-trained model after standard and "
                         "adversarial transfer)", claims))
        return 0

    return rc.main_guard(body)


if __name__ == "__main__":
    sys.exit(main())
