"""`pipeline compare RUN_DIR...`: runs side by side in the layout of the SW headline table (spec §6.1).

    pipeline compare runs/dense runs/robust_bird runs/flying_bird runs/flying_bird_plus
    pipeline compare runs/a runs/b --label dense --label FB+ --out results/table.md   # + table.csv, table.json

One row per run: RA best / final / diff, SA best / final / diff, training FLOPs (paper-compatible and
corrected), inference FLOPs of the final model, robust generalization gap; optional columns (density,
other attacks' RA, corruption mean accuracy, CPU latency) appear when any run has them. Which stage
each number comes from is stated per run, and what each column means in the footnotes.

The run's final model is the one its last `evaluate` stage judged (followed through stage.json
`model_from`); RA/SA best/final come from the training history of that stage (or the nearest stage
upstream that has one); training FLOPs sum every stage in its `input` lineage that trained.
"""
from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.engine import store
from pipeline.engine.errors import PipelineError
from pipeline.reporting.report import MASKS, RunView, StageView, attack_text, fmt, load_run, mask_densities, md_table, num


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    note: str
    digits: int = 2
    optional: bool = False
    flops: bool = False  # shown in one power-of-ten unit per column


COLUMNS = (
    Column("ra_best", "RA best", "test RA (%) at the epoch with the best val RA"),
    Column("ra_final", "RA final", "test RA (%) at the last evaluated epoch"),
    Column("ra_diff", "RA diff", "RA best − RA final (robust overfitting, pp)"),
    Column("sa_best", "SA best", "test SA (%) at the same best-val-RA epoch"),
    Column("sa_final", "SA final", "test SA (%) at the last evaluated epoch"),
    Column("sa_diff", "SA diff", "SA best − SA final (pp)"),
    Column("train_flops_paper", "Train FLOPs paper", "summed over the training stages of the final model's "
           "lineage; (attack steps + 1) × 3F per image", flops=True),
    Column("train_flops_corrected", "Train FLOPs corrected", "same stages; 3F per update + 2F per attack step, "
           "dense weight gradient at gradient-based growth steps, F along the density trajectory", flops=True),
    Column("inference_flops", "Inf FLOPs", "per image, of the final model: 2 × MACs of conv/linear weights × "
           "layer density", flops=True),
    Column("robust_gap", "Gap", "train RA (non-augmented train split, eval mode) − test RA, from the evaluate "
           "stage, at the final checkpoint where it was measured (as the paper), else at the checkpoint evaluated "
           "(per run below) (pp)"),
)
OPTIONAL_COLUMNS = (
    Column("density", "Density", "fraction of prunable weights kept in the final model", digits=3, optional=True),
    Column("robust_gap_running_train", "Gap (running)", "running train-batch adversarial accuracy of the last "
           "epoch − test RA (Robust Bird script's variant, pp)", optional=True),
    Column("corruption_mean_acc", "Corruption mean", "unweighted mean accuracy (%) over corruption types × "
           "severities (RobustBench convention)", optional=True),
    Column("cpu_b1_median_ms", "CPU b1 median (ms)", "onnxruntime CPU latency, batch 1, median", digits=3,
           optional=True),
)


def _last_runtime(run: RunView) -> dict | None:
    for st in reversed(run.finished()):
        rt = st.record.get("runtime")
        if isinstance(rt, dict) and rt.get("providers"):
            return rt
    return None


def _history_stage(run: RunView, final: StageView) -> StageView | None:
    """The nearest stage at or above the final model that logged test RA per epoch."""
    for st in reversed(run.lineage(final)):
        if any(num(row.get("test_ra")) is not None for row in st.history()):
            return st
    return None


def _inference_flops(final: StageView) -> tuple[float | None, float | None]:
    """(sparse, dense) per-image FLOPs of the final model. Counted from its card and saved masks when it
    has masks (exact for the weights kept, whichever epoch they come from), else from its FLOPs record."""
    card = final.record.get("model")
    inf = ((final.record.get("flops") or {}).get("inference")) or {}
    if MASKS not in final.files or not card:
        if num(inf.get("sparse_flops")) is not None:
            return num(inf["sparse_flops"]), num(inf.get("dense_flops"))
        if not card:
            return None, None
    from pipeline.metrics.flops import count_macs, inference_flops
    from pipeline.models.card import build_model

    densities = mask_densities(final.tensors(MASKS))[0] if MASKS in final.files else None
    layers = count_macs(build_model(card), (card["in_chans"], *card["input_size"]))
    try:
        res = inference_flops(layers, densities)
    except ValueError as exc:
        raise PipelineError(f"{final.dir / MASKS}: masks do not fit model {card.get('arch')!r}: {exc}") from None
    return float(res["sparse_flops"]), float(res["dense_flops"])


def summarize_run(run: RunView, label: str | None = None) -> dict[str, Any]:
    """The comparison row of one run (raw numbers, None where the run has no such figure) and where each
    figure came from."""
    from pipeline.metrics.evaluation import summarize_history

    row: dict[str, Any] = {"label": label or run.name, "run_dir": str(run.dir), "run_name": run.name}
    final = run.final_model_stage()
    ev = run.evaluate_stage()
    row.update({"final_stage": final.name if final else None, "evaluate_stage": ev.name if ev else None,
                "history_stage": None, "best_epoch": None, "training_stages": [], "gap_checkpoint": None})
    for col in (*COLUMNS, *OPTIONAL_COLUMNS):
        row[col.key] = None
    if final is None:
        return row

    hist_stage = _history_stage(run, final)
    if hist_stage is not None:
        history = hist_stage.history()
        # as training selects: val RA; clean-trained runs without RA select on val SA
        key = next((k for k in ("val_ra", "val_sa", "test_ra") if any(num(r.get(k)) is not None for r in history)),
                   "val_ra")
        s = summarize_history(history, key)
        row.update({"history_stage": hist_stage.name, "best_epoch": s["best_epoch"],
                    "best_selected_on": key,
                    "ra_best": s["RA_best"], "ra_final": s["RA_final"], "ra_diff": s["RA_diff"],
                    "sa_best": s["SA_best"], "sa_final": s["SA_final"], "sa_diff": s["SA_diff"]})
        eval_attack = (hist_stage.config.get("eval") or {}).get("attack")
        row["history_attack"] = attack_text(eval_attack) if eval_attack else None

    trained = run.training_stages(final)
    if trained:
        row["training_stages"] = [s.name for s in trained]
        row["train_flops_paper"] = sum(num(s.record["flops"]["training"].get("paper")) or 0.0 for s in trained)
        row["train_flops_corrected"] = sum(num(s.record["flops"]["training"].get("corrected")) or 0.0
                                           for s in trained)
    row["inference_flops"], row["inference_flops_dense"] = _inference_flops(final)

    if MASKS in final.files:
        row["density"] = mask_densities(final.tensors(MASKS))[1]

    if ev is not None:
        m = ev.metrics
        # the paper's gap is at the final epoch; older evaluate stages measured only the selected checkpoint
        final_ck = ((m.get("checkpoints") or {}).get("final")) or {}
        if num(m.get("robust_gap_final")) is not None:
            row["robust_gap"], row["gap_checkpoint"] = num(m["robust_gap_final"]), "final"
            row["robust_gap_running_train"] = num(final_ck.get("robust_gap_running_train"))
        else:
            row["robust_gap"] = num(m.get("robust_gap"))
            if row["robust_gap"] is None and num(m.get("train_ra")) is not None and num(m.get("test_ra")) is not None:
                row["robust_gap"] = m["train_ra"] - m["test_ra"]
            row["gap_checkpoint"] = m.get("checkpoint") or "evaluated"
            row["robust_gap_running_train"] = num(m.get("robust_gap_running_train"))
        row["train_ra"], row["test_ra"], row["test_sa"] = num(m.get("train_ra")), num(m.get("test_ra")), num(m.get("test_sa"))
        row["eval_attack"] = attack_text(m.get("attack"))
        row["train_n"] = m.get("train_n")
        attacks = m.get("ra") if isinstance(m.get("ra"), dict) else {}
        # the first attack is the one behind test_ra and the gap; columns only for the further ones
        row["ra_attacks"] = {name: {"test": num((r or {}).get("test")), "attack": attack_text((r or {}).get("attack"))}
                             for name, r in list(attacks.items())[1:]}
        corr = m.get("corruption")
        if isinstance(corr, dict):
            row["corruption_mean_acc"] = num(corr.get("mean_acc"))
            row["corruption_source"] = corr.get("source")
    rt = _last_runtime(run)
    if rt is not None:
        cpu = rt["providers"].get("cpu") or {}
        if cpu.get("status") == "ok":
            b1 = (cpu.get("per_batch") or {}).get("1") or {}
            row["cpu_b1_median_ms"] = num(b1.get("median_ms"))
            row["cpu_b1_p90_ms"] = num(b1.get("p90_ms"))
    return row


def _labels(runs: list[RunView], labels: list[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(runs):
            raise PipelineError(f"--label given {len(labels)} times for {len(runs)} runs; give one per run or none")
        return list(labels)
    names = [r.name for r in runs]
    counts = Counter(names)
    # same run name twice (e.g. two seeds of one config): the folder names tell them apart
    return [r.name if counts[r.name] == 1 else f"{r.name} ({r.dir.name})" for r in runs]


def _gap_cell(value: float | None, reference: float | None, is_reference: bool) -> str:
    if value is None:
        return "—"
    if is_reference or reference is None:
        return fmt(value)
    delta = value - reference
    arrow = "↓" if delta < 0 else "↑"
    return f"{fmt(value)} ({arrow}{abs(delta):.2f})"


def compare_runs(run_dirs: list[Path], out: Path | None = None, labels: list[str] | None = None
                 ) -> tuple[str, dict]:
    """Markdown comparison table of runs and its data; with `out`, also written there (markdown) and
    beside it as .csv and .json.

    CLI: `pipeline compare RUN_DIR... [--label NAME ...] [--out FILE.md]`.
    """
    if not run_dirs:
        raise PipelineError("compare: give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    rows = [summarize_run(run, label) for run, label in zip(runs, _labels(runs, labels))]

    attack_names = sorted({name for r in rows for name in (r.get("ra_attacks") or {})})
    columns = list(COLUMNS)
    columns += [c for c in OPTIONAL_COLUMNS if c.key != "density" and any(r.get(c.key) is not None for r in rows)]
    if any(r.get("density") is not None for r in rows):
        columns.insert(len(COLUMNS), OPTIONAL_COLUMNS[0])
        for r in rows:  # a run without masks is dense
            if r.get("density") is None and r.get("final_stage") is not None:
                r["density"] = 1.0
    for name in attack_names:
        key = f"ra_{name}"
        for r in rows:
            r[key] = ((r.get("ra_attacks") or {}).get(name) or {}).get("test")
        columns.append(Column(key, f"RA {name}", f"test RA (%) of the final model under `{name}` "
                              f"({_attack_of(rows, name)}), evaluate stage", optional=True))

    units = {c.key: _unit(rows, c.key) for c in columns if c.flops}
    headers, align = ["run"], ["l"]
    for c in columns:
        headers.append(c.title + (f" ({units[c.key][1]})" if c.flops and units[c.key][1] else ""))
        align.append("r")
    table_rows = []
    reference = rows[0].get("robust_gap")
    for i, r in enumerate(rows):
        cells = [r["label"]]
        for c in columns:
            v = r.get(c.key)
            if c.flops:
                cells.append("—" if v is None else f"{v / units[c.key][0]:.2f}")
            elif c.key == "robust_gap" and len(rows) > 1:
                cells.append(_gap_cell(v, reference, i == 0))
            else:
                cells.append(fmt(v, c.digits))
        table_rows.append(cells)

    notes = [f"- **{c.title}**: {c.note}." for c in columns]
    if len(rows) > 1 and reference is not None:
        notes.append(f"- Arrows in **Gap**: change against the first run ({rows[0]['label']}), as in the paper's table.")
    attacks = sorted({r.get("history_attack") for r in rows if r.get("history_attack")})
    if attacks:
        notes.append(f"- Per-epoch RA (best/final) measured under: {'; '.join(attacks)} (the training stage's `eval.attack`).")
    for run, r in zip(runs, rows):  # damaged stages (pipeline.engine.integrity) contribute no figure
        bad = [st.name for st in run.stages if st.status == "damaged"]
        if bad:
            notes.append(f"- **{r['label']}: DAMAGED stage(s) {', '.join(bad)} left out** (altered or missing "
                         "files or record; `pipeline run CONFIG --repair` redoes them).")
    eval_attacks = sorted({r.get("eval_attack") for r in rows if r.get("eval_attack")})
    if eval_attacks:
        notes.append(f"- Gap measured under: {'; '.join(eval_attacks)}.")
    sources = {r["label"]: r.get("corruption_source") for r in rows if r.get("corruption_mean_acc") is not None}
    if sources:
        notes.append("- Corruption sets: " + ", ".join(f"{k}: {v}" for k, v in sources.items())
                     + (" (generated and published sets are not comparable)" if len(set(sources.values())) > 1 else "")
                     + ".")
    per_run = []
    for r in rows:
        if r.get("final_stage") is None:
            per_run.append(f"- {r['label']} (`{r['run_dir']}`): no stage has produced a model yet.")
            continue
        per_run.append(
            f"- {r['label']} (`{r['run_dir']}`): final model `{r['final_stage']}`"
            + (f", history of `{r['history_stage']}` (best epoch {r['best_epoch']}"
               + {"test_ra": ", selected on test RA: no val RA was logged",
                  "val_sa": ", selected on val SA: clean training logged no RA"}.get(r.get("best_selected_on"), "")
               + ")" if r.get("history_stage") else ", no per-epoch history")
            + (f", training stages {' + '.join(f'`{s}`' for s in r['training_stages'])}" if r["training_stages"] else "")
            + (f", evaluated by `{r['evaluate_stage']}` (gap at the {r.get('gap_checkpoint')} checkpoint)"
               if r.get("evaluate_stage") else ", not evaluated") + ".")
    text = (md_table(headers, table_rows, align) + "\n\n" + "\n".join(notes) + "\n\nSources:\n" + "\n".join(per_run)
            + "\n")

    keys = ["label", "run_dir", "final_stage", "history_stage", "evaluate_stage", "best_epoch", "gap_checkpoint",
            *[c.key for c in columns], "inference_flops_dense", "training_stages"]
    data = {"columns": [{"key": c.key, "title": c.title, "definition": c.note} for c in columns],
            "rows": [{k: r.get(k) for k in keys} | {"details": _details(r)} for r in rows],
            "markdown": text}
    if out is not None:
        out = Path(out)
        store.atomic_write_text(out, text)
        store.atomic_write_text(out.with_suffix(".csv"), _csv(data["rows"], keys))
        store.atomic_write_json(out.with_suffix(".json"), data)
    return text, data


def _details(r: dict) -> dict:
    keys = ("run_name", "train_ra", "test_ra", "test_sa", "train_n", "eval_attack", "history_attack",
            "best_selected_on", "cpu_b1_p90_ms", "corruption_source", "ra_attacks")
    return {k: r.get(k) for k in keys if r.get(k) is not None}


def _attack_of(rows: list[dict], name: str) -> str:
    texts = sorted({(r.get("ra_attacks") or {}).get(name, {}).get("attack") for r in rows} - {None})
    return "; ".join(texts) or "parameters not recorded"


def _unit(rows: list[dict], key: str) -> tuple[float, str]:
    from pipeline.reporting.plots import engineering

    values = [abs(r[key]) for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    return engineering(max(values)) if values else (1.0, "")


def _csv(rows: list[dict], keys: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for r in rows:
        writer.writerow(["+".join(v) if isinstance(v := r.get(k), list) else ("" if v is None else v) for k in keys])
    return buf.getvalue()
