"""`pipeline compare RUN_DIR...`: runs side by side in the layout of the SW headline table (spec §6.1).

    pipeline compare runs/dense runs/robust_bird runs/flying_bird runs/flying_bird_plus
    pipeline compare runs/a runs/b --label dense --label FB+ --out results/table.md   # + table.csv, table.json

One row per run (`pipeline.reporting.summary.summarize_run`): RA best / final / diff, SA best / final /
diff, training FLOPs (paper-compatible and corrected), inference FLOPs of the final model, robust
generalization gap; optional columns (density, other attacks' RA, the images behind RA, the 15- and 19-type
corruption means, CPU latency) appear when any run has them. Which stage each number comes from is stated
per run, and what each column means in the footnotes; a corruption mean on generated images, fewer types or
fewer severities carries a marker explained there. Runs with a security curve get a table of RA at every
eps, and with --out one figure of all the curves (FILE_security_curves.png).
"""
from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path

from pipeline.corruptions.means import LEGEND
from pipeline.engine import store
from pipeline.engine.errors import PipelineError
from pipeline.engine.rundir import RunDir
from pipeline.reporting.curves import NOTE, curve_plot, curve_table
from pipeline.reporting.format import engineering, fmt, md_table
from pipeline.reporting.summary import COLUMNS, OPTIONAL_COLUMNS, Column, summarize_run


def _labels(runs: list[RunDir], labels: list[str] | None) -> list[str]:
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
    runs = [RunDir(d) for d in run_dirs]
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
                              f"({_attack_of(rows, name)}), evaluate stage; (n = ...) the test images it ran on",
                              optional=True))

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
            elif c.key.startswith("corruption_mean_"):
                marks = (r.get("corruption_marks") or {}).get(c.key, "") if v is not None else ""
                cells.append(fmt(v, c.digits) + marks)
            elif c.key.startswith("ra_") and c.key[3:] in attack_names and v is not None:
                n = ((r.get("ra_attacks") or {}).get(c.key[3:]) or {}).get("n")
                cells.append(fmt(v, c.digits) + (f" (n = {fmt(n)})" if n is not None else ""))
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
    notes += _corruption_notes(rows)
    if any(r.get("test_n") is not None for r in rows):
        notes.append("- RA n (test images): " + ", ".join(
            f"{r['label']}: RA best/final {fmt(r.get('ra_n'))}, evaluate stage {fmt(r.get('test_n'))}"
            for r in rows if r.get("final_stage") is not None) + ".")
    per_run = []
    for r in rows:
        if r.get("final_stage") is None:
            per_run.append(f"- {r['label']} (`{r['run_dir']}`): no stage has produced a model yet.")
            continue
        per_run.append(
            f"- {r['label']} (`{r['run_dir']}`): final model `{r['final_stage']}`"
            + (f", history of `{r['history_stage']}` (best epoch {r['best_epoch']}"
               + {"test_ra": ", selected on test RA: no val RA was logged",
                  "val_sa": ", selected on val SA: clean training logged no RA",
                  "test_sa": ", selected on test SA: clean training logged no RA or val figure"}.get(
                   r.get("best_selected_on"), "")
               + ")" if r.get("history_stage") else ", no per-epoch history")
            + (f", training stages {' + '.join(f'`{s}`' for s in r['training_stages'])}" if r["training_stages"] else "")
            + (f", evaluated by `{r['evaluate_stage']}` (gap at the {r.get('gap_checkpoint')} checkpoint)"
               if r.get("evaluate_stage") else ", not evaluated") + ".")
    curves = {r["label"]: r["security_curve"] for r in rows if r.get("security_curve") is not None}
    curve_text = ""
    if curves:
        curve_text = ("\n\n### Security curves\n\n" + NOTE + "\n\n" + curve_table(curves)
                      + (f"\n\n![security curves]({_curve_figure(curves, out).name})" if out is not None else
                         "\n\n(`--out FILE.md` also draws them on one figure.)"))
    text = (md_table(headers, table_rows, align) + "\n\n" + "\n".join(notes) + curve_text
            + "\n\nSources:\n" + "\n".join(per_run) + "\n")

    keys = ["label", "run_dir", "final_stage", "history_stage", "evaluate_stage", "best_epoch", "gap_checkpoint",
            *[c.key for c in columns], "inference_flops_dense", "corruption_mean_acc", "training_stages"]
    data = {"columns": [{"key": c.key, "title": c.title, "definition": c.note} for c in columns],
            "rows": [{k: r.get(k) for k in keys} | {"details": _details(r)} for r in rows],
            "security_curves": {label: c.to_json() for label, c in curves.items()},
            "markdown": text}
    if out is not None:
        out = Path(out)
        store.atomic_write_text(out, text)
        store.atomic_write_text(out.with_suffix(".csv"), _csv(data["rows"], keys))
        store.atomic_write_json(out.with_suffix(".json"), data)
    return text, data


def _corruption_notes(rows: list[dict]) -> list[str]:
    """Legend of the corruption columns' markers and what each run's means were computed on."""
    runs = [r for r in rows if r.get("corruption_source") is not None]
    if not runs:
        return []
    notes = ["- Corruption sets: " + "; ".join(f"{r['label']}: {r['corruption_described']}" for r in runs)
             + (" (generated and published sets are not comparable)"
                if len({r['corruption_source'] for r in runs}) > 1 else "") + "."]
    used = "".join((r.get("corruption_marks") or {}).get(k, "") for r in runs
                   for k in ("corruption_mean_15", "corruption_mean_19"))
    notes += [f"- {mark} {LEGEND[mark]}." for mark in LEGEND if mark in used]
    return notes


def _curve_figure(curves: dict, out: Path) -> Path:
    path = out.with_name(out.stem + "_security_curves.png")
    return curve_plot(curves, path, "robust accuracy against eps")


def _details(r: dict) -> dict:
    keys = ("run_name", "train_ra", "test_ra", "test_sa", "train_n", "test_n", "eval_attack", "history_attack",
            "best_selected_on", "cpu_b1_p90_ms", "corruption_source", "corruption_described", "ra_attacks")
    return {k: r.get(k) for k in keys if r.get(k) is not None}


def _attack_of(rows: list[dict], name: str) -> str:
    texts = sorted({(r.get("ra_attacks") or {}).get(name, {}).get("attack") for r in rows} - {None})
    return "; ".join(texts) or "parameters not recorded"


def _unit(rows: list[dict], key: str) -> tuple[float, str]:
    values = [abs(r[key]) for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    return engineering(max(values)) if values else (1.0, "")


def _csv(rows: list[dict], keys: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for r in rows:
        writer.writerow(["+".join(v) if isinstance(v := r.get(k), list) else ("" if v is None else v) for k in keys])
    return buf.getvalue()
