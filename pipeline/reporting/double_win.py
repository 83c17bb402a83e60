"""The double-win table (spec §4.3): do transferred tickets match the dense model under both fine-tunings?

A ticket of sparsity s is a double win on a downstream task when, against the dense model fine-tuned
the same way, it is not worse (within `tolerance` percentage points) on all three of: test SA after
standard fine-tuning, test SA and test RA after adversarial fine-tuning. The answer is the highest
such sparsity.

From finished runs (finetune stages with a `transfer:` block; mode clean = standard, mode pgd =
adversarial; the dense baseline is the group of sparsity 0, i.e. an input model without masks):

    result = double_win_table([Path("runs/ticket_a"), Path("runs/ticket_b")], tolerance=0.5)
    print(format_double_win(result))           # or: pipeline double-win runs/ticket_a runs/ticket_b

From numbers already at hand, (sparsity, std SA, adv SA, adv RA) rows and the dense row:

    table = double_win_from_rows([(0.2, 91.0, 80.1, 45.2), (0.488, 90.2, 79.0, 44.0)], dense=(90.5, 80.0, 45.0))
    table["double_win_sparsity"]               # 0.2

Which checkpoint is compared (the spec leaves it open): with select="best", standard fine-tuning gives
test SA at the epoch of best val SA, adversarial fine-tuning test SA and RA at the epoch of best val RA
(the papers' SA_best / RA_best); with select="final", the last evaluated epoch. The figures of that
epoch are an `evaluate` stage's when one measured that checkpoint (whole test split, its first attack),
else the per-epoch history's; each table says which. Several stages of the same task and sparsity
(e.g. seeds) are averaged, and their count is shown.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.engine.errors import CheckpointError, PipelineError
from pipeline.engine.rundir import STAGE_JSON, StageRecord
from pipeline.metrics.evaluation import select_best
from pipeline.reporting.format import md_table

REGIMES = {"clean": "standard", "pgd": "adversarial"}
METRICS = ("std_sa", "adv_sa", "adv_ra")
LABELS = {"std_sa": "standard SA", "adv_sa": "adversarial SA", "adv_ra": "adversarial RA"}
_EPS = 1e-9  # percentages are ratios of counts; keep equal values equal after subtracting a tolerance

SELECTION = {
    "best": "standard: test SA at the best-val-SA epoch; adversarial: test SA and RA at the best-val-RA epoch",
    "final": "test SA / RA at the last evaluated epoch",
}


def _matches(value: float | None, dense: float | None, tolerance: float) -> bool | None:
    if value is None or dense is None:
        return None
    return value >= dense - tolerance - _EPS


def double_win_from_rows(rows: Iterable[Sequence[float | None]], dense: Sequence[float | None],
                         tolerance: float = 0.0) -> dict:
    """Judge (sparsity, std_sa, adv_sa, adv_ra) rows against the dense (std_sa, adv_sa, adv_ra).

    Sparsity is a fraction in [0, 1); accuracies are percentages; None means not measured, which makes
    that row undecided (never a double win). Returns {"tolerance", "dense", "rows" (sorted by sparsity,
    each with its deltas, per-metric matches and "double_win"), "double_win_sparsity" (None if none)}.
    """
    if tolerance < 0:
        raise PipelineError(f"tolerance must be >= 0 percentage points, got {tolerance}")
    if len(dense) != 3:
        raise PipelineError(f"dense: expected (std_sa, adv_sa, adv_ra), got {tuple(dense)}")
    base = dict(zip(METRICS, dense))
    out_rows = []
    for row in rows:
        if len(row) != 4:
            raise PipelineError(f"row {tuple(row)}: expected (sparsity, std_sa, adv_sa, adv_ra)")
        sparsity = float(row[0])
        if not 0.0 <= sparsity < 1.0:
            raise PipelineError(f"row {tuple(row)}: sparsity must be a fraction in [0, 1)")
        values = dict(zip(METRICS, row[1:]))
        matches = {m: _matches(values[m], base[m], tolerance) for m in METRICS}
        delta = {m: None if values[m] is None or base[m] is None else values[m] - base[m] for m in METRICS}
        verdict = None if any(v is None for v in matches.values()) else all(matches.values())
        out_rows.append({"sparsity": sparsity, **values, "delta": delta, "matches": matches, "double_win": verdict})
    out_rows.sort(key=lambda r: r["sparsity"])
    wins = [r["sparsity"] for r in out_rows if r["double_win"] and r["sparsity"] > 0]
    return {"tolerance": tolerance, "dense": base, "rows": out_rows,
            "double_win_sparsity": max(wins) if wins else None}


# --------------------------------------------------------------------------------------------------
# discovery in run directories

def _stage_dirs(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """(run_dir, stage name) of every finished stage under the given run directories or stage folders."""
    found = []
    for path in paths:
        path = Path(path)
        if (path / STAGE_JSON).is_file():
            found.append((path.parent, path.name))
        elif path.is_dir():
            found.extend((path, child.name) for child in sorted(path.iterdir()) if (child / STAGE_JSON).is_file())
        else:
            raise PipelineError(f"{path}: not a run directory or stage folder (no such directory)")
    return found


def _value_at(history: list[dict], key: str, select: str) -> tuple[int, dict]:
    if select == "final":
        for row in reversed(history):
            if row.get("test_sa") is not None:
                return row.get("epoch"), row
        raise PipelineError("no epoch has test SA")
    row = history[select_best(history, key)]
    return row.get("epoch"), row


def _evaluation_of(stage: StageRecord, which: str, epoch: int | None) -> dict | None:
    """The figures a finished `evaluate` stage of the same run measured on `stage`'s `which` checkpoint
    (test SA, the first attack's test RA, the test image count), if it measured that epoch."""
    for child in sorted(stage.dir.parent.iterdir()):
        if child.name == stage.name or not (child / STAGE_JSON).is_file():
            continue
        ev = StageRecord(stage.dir.parent, child.name)
        if ev.type != "evaluate" or not ev.finished or ev.data.get("model_from") != stage.name:
            continue
        metrics = ev.metrics
        ck = (metrics.get("checkpoints") or {}).get(which)
        if not ck or ck.get("epoch") != epoch:
            continue
        attack, ra = next(iter((ck.get("ra") or {}).items()), (None, {}))
        test = (metrics.get("splits") or {}).get("test") or {}
        return {"sa": (ck.get("sa") or {}).get("test"), "ra": ra.get("test"), "n": test.get("n"),
                "attack": attack, "from": ev.name}
    return None


def _measure(stage: StageRecord, regime: str, select: str) -> dict:
    """SA (and RA) of the compared checkpoint. The epoch is chosen on the per-epoch history; its figures
    come from an `evaluate` stage of that checkpoint when there is one (the whole test split, the final
    attack), else from the history row (per-epoch evaluation, maybe on a `test_limit` cut)."""
    history = stage.history()
    if not history:
        raise PipelineError(f"{stage.dir}: no history.jsonl to read SA/RA from")
    try:
        epoch, row = _value_at(history, "val_sa" if regime == "standard" else "val_ra", select)
    except PipelineError as exc:
        raise PipelineError(f"{stage.dir}: {exc}") from None
    ev = _evaluation_of(stage, select, epoch)
    if ev is not None:
        sa, ra, source = ev["sa"], ev["ra"], {"measured_by": ev["from"], "n": ev["n"], "attack": ev["attack"]}
    else:
        sa, ra, source = row.get("test_sa"), row.get("test_ra"), {"measured_by": "history", "n": row.get("test_n")}
    if regime == "standard":
        return {"std_sa": sa, "epoch": epoch, **source}
    if ra is None:
        raise PipelineError(f"{stage.dir}: adversarial fine-tuning without test RA (eval.robust off?)")
    return {"adv_sa": sa, "adv_ra": ra, "epoch": epoch, **source}


def _task_of(transfer: dict, arch: str) -> tuple:
    tgt, src = transfer["target"], transfer["source"]
    target = tgt["dataset"]
    if tgt.get("source") not in (None, "", target):
        target = f"{target} ({tgt['source']})"
    return (src.get("dataset"), arch, target, float(tgt["train_fraction"]), tgt.get("subset", "all"))


def collect_transfers(run_dirs: Iterable[Path], select: str = "best") -> tuple[list[dict], list[str]]:
    """Measurements of every transfer finetune stage found, and notes on stages left out (and why)."""
    if select not in SELECTION:
        raise PipelineError(f"select must be one of {', '.join(SELECTION)}, got {select!r}")
    found, skipped = [], []
    for run_dir, name in _stage_dirs(run_dirs):
        stage = StageRecord(run_dir, name)
        if stage.status == "damaged":
            raise CheckpointError(stage.detail)
        transfer = stage.section("transfer")
        if stage.type != "finetune" or not transfer:
            continue
        where = f"{run_dir / name}"
        mode = stage.config.get("mode")
        regime = REGIMES.get(mode)
        if regime is None:
            skipped.append(f"{where}: mode {mode!r} is neither standard (clean) nor adversarial (pgd) fine-tuning")
            continue
        masks = transfer["masks"]
        if not masks["keep_mask"] and masks["source_layers"]:
            skipped.append(f"{where}: keep_mask is false, so it is neither a ticket nor the dense model")
            continue
        sparsity = round(float(masks["source_sparsity"]), 6)
        found.append({"task": _task_of(transfer, transfer["source"]["arch"]), "sparsity": sparsity,
                      "regime": regime, "stage": where,
                      **_measure(stage, regime, select)})
    return found, skipped


def _sources(found: list[dict]) -> list[str]:
    """Where the figures came from, e.g. "6 stages: evaluate stages, pgd20, test n = 2061"."""
    groups: dict[str, int] = {}
    for f in found:
        n = f" n = {f['n']}" if f.get("n") is not None else " n not recorded"
        text = ("per-epoch history, test" + n if f["measured_by"] == "history"
                else f"evaluate stages, {f.get('attack') or 'RA'}, test" + n)
        groups[text] = groups.get(text, 0) + 1
    return [f"{count} stage{'s' if count > 1 else ''}: {text}" for text, count in sorted(groups.items())]


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def double_win_table(run_dirs: list[Path], tolerance: float = 0.0, select: str = "best") -> dict:
    """Double-win tables, one per downstream task, from finished transfer stages in `run_dirs`.

    A task is (source dataset, arch, target dataset, train fraction, subset). Each table is the
    `double_win_from_rows` result plus "task", "counts" (stages averaged per sparsity and regime) and
    "stages". A task without a dense baseline is left out with a note in "skipped"; PipelineError when
    no table at all can be built.
    """
    found, skipped = collect_transfers(run_dirs, select)
    if not found:
        raise PipelineError(f"no finished finetune stage with a `transfer:` block in {', '.join(map(str, run_dirs))}"
                            + (f" ({len(skipped)} left out: {skipped[0]})" if skipped else ""))
    tables = []
    for task in sorted({f["task"] for f in found}, key=str):
        mine = [f for f in found if f["task"] == task]
        by_sparsity: dict[float, dict[str, list[float | None]]] = {}
        counts: dict[float, dict[str, int]] = {}
        for f in mine:
            cell = by_sparsity.setdefault(f["sparsity"], {m: [] for m in METRICS})
            for m in METRICS:
                if m in f:
                    cell[m].append(f[m])
            n = counts.setdefault(f["sparsity"], {"standard": 0, "adversarial": 0})
            n[f["regime"]] += 1
        means = {s: tuple(_mean(cell[m]) for m in METRICS) for s, cell in by_sparsity.items()}
        if 0.0 not in means:
            skipped.append(f"task {_task_text(task)}: no dense baseline (a transfer stage whose input model has "
                           f"no masks); sparsities found: {', '.join(_pct(s) for s in sorted(means))}")
            continue
        table = double_win_from_rows([(s, *v) for s, v in means.items() if s > 0], means[0.0], tolerance)
        table.update({"task": dict(zip(("source", "arch", "target", "train_fraction", "subset"), task)),
                      "counts": {str(s): counts[s] for s in sorted(counts)},
                      "stages": sorted(f["stage"] for f in mine), "measured": _sources(mine)})
        tables.append(table)
    if not tables:
        raise PipelineError("no double-win table can be built: " + "; ".join(skipped))
    return {"tolerance": tolerance, "select": select, "selection": SELECTION[select], "tables": tables,
            "skipped": skipped}


# --------------------------------------------------------------------------------------------------
# markdown

def _task_text(task: tuple | dict) -> str:
    t = task if isinstance(task, dict) else dict(zip(("source", "arch", "target", "train_fraction", "subset"), task))
    frac = t["train_fraction"]
    limited = f", {frac * 100:g}% of the training data ({t['subset']})" if frac < 1 else ""
    return f"{t['arch']} from {t['source']} to {t['target']}{limited}"


def _cell(value: float | None, delta: float | None = None, ok: bool | None = None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.2f}"
    if delta is not None:
        text += f" ({delta:+.2f})"
    if ok is False:
        text += " ✗"
    return text


def _pct(s: float) -> str:
    return f"{100 * s:.2f}%"


def format_table(table: dict) -> str:
    """One double-win table as markdown (dense row first, deltas vs dense in parentheses, ✗ = below dense)."""
    lines = []
    if "task" in table:
        lines.append(f"### {_task_text(table['task'])}")
        lines.append("")
    d = table["dense"]
    rows = [["0.00% (dense)", _cell(d["std_sa"]), _cell(d["adv_sa"]), _cell(d["adv_ra"]), "baseline"]]
    for r in table["rows"]:
        verdict = {True: "yes", False: "no", None: "incomplete"}[r["double_win"]]
        rows.append([_pct(r["sparsity"]), *(_cell(r[m], r["delta"][m], r["matches"][m]) for m in METRICS), verdict])
    lines.append(md_table(["sparsity", "standard SA", "adversarial SA", "adversarial RA", "double win"], rows,
                          ["r", "r", "r", "r", "c"]))
    best = table["double_win_sparsity"]
    if table.get("measured"):
        lines += ["", "Measured by: " + "; ".join(table["measured"]) + "."]
    lines.append("")
    lines.append(f"Highest double-win sparsity: **{_pct(best)}**" if best is not None
                 else "Highest double-win sparsity: **none** (no ticket matches dense on all three)")
    return "\n".join(lines)


def format_double_win(result: dict) -> str:
    """Markdown for a `double_win_table` result (several tasks) or a single `double_win_from_rows` table."""
    tables = result["tables"] if "tables" in result else [result]
    tol = result["tolerance"]
    parts = [f"## Double-win tickets (tolerance {tol:g} pp)", ""]
    if "selection" in result:
        parts += [f"Compared: {result['selection']}.", ""]
    parts.append("A ticket wins twice when none of the three falls more than the tolerance below dense.")
    for table in tables:
        parts += ["", format_table(table)]
    for note in result.get("skipped", []):
        parts.append(f"\nLeft out: {note}")
    return "\n".join(parts) + "\n"
