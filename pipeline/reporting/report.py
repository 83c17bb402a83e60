"""`pipeline report RUN_DIR`: a markdown report, with PNG plots, of everything a run's stages recorded.

    pipeline report runs/quickstart                        # runs/quickstart/report.md + runs/quickstart/plots/*.png
    pipeline report runs/quickstart --out /tmp/r/report.md # plots go beside it, in /tmp/r/plots/

It reads only what the stages wrote (stage.json, history.jsonl, masks.safetensors, a rewire stage's
update log, runtime.json), through the run-directory read model (pipeline.engine.rundir), so every
file is checked against the sha256 its stage.json records; nothing is trained or evaluated. A section
whose data the run does not have is left out, and a damaged file costs its own section only (the
report says which file and why). The sections live in pipeline/reporting/sections/.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pipeline.corruptions.means import LEGEND
from pipeline.engine import store
from pipeline.engine.errors import PipelineError
from pipeline.engine.rundir import RunDir
from pipeline.reporting.format import flops_text, fmt, md_table
from pipeline.reporting.sections.cost import flops, latency
from pipeline.reporting.sections.robustness import robustness
from pipeline.reporting.sections.sparsity import sparsity
from pipeline.reporting.sections.training import stage_table, training_curves
from pipeline.reporting.sections.deployment import deployment_section
from pipeline.reporting.summary import COLUMNS, OPTIONAL_COLUMNS, summarize_run


class Report:
    """The report being built: sections add markdown parts and plots to it."""

    def __init__(self, run: RunDir, out: Path):
        self.run = run
        self.out = out
        self.plot_dir = out.parent / "plots"
        self.parts: list[str] = []
        self.made: list[Path] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def image(self, path: Path, alt: str) -> None:
        self.made.append(path)
        self.add(f"![{alt}]({Path(os.path.relpath(path, self.out.parent)).as_posix()})")

    def plot_path(self, name: str) -> Path:
        return self.plot_dir / f"{name}.png"

    def section(self, title: str, body: Callable[[Report], None]) -> None:
        """Run one section; a damaged or unexpected input costs that section only, with a note."""
        start = len(self.parts)
        self.add(f"## {title}")
        try:
            body(self)
        except PipelineError as exc:
            self.add(f"_This section could not be made: {exc}_")
        except (KeyError, TypeError, ValueError) as exc:
            self.add(f"_This section could not be made from the recorded data: {type(exc).__name__}: {exc}_")
        if len(self.parts) == start + 1:  # nothing to say
            del self.parts[start:]

    def text(self) -> str:
        return "\n\n".join(self.parts).rstrip() + "\n"


def write_report(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Write the markdown report of a run (default RUN_DIR/report.md) and its plots (plots/ beside it).

    CLI: `pipeline report RUN_DIR [--out FILE.md]`. Returns the report's path.
    """
    run = RunDir(run_dir)
    out = Path(out) if out is not None else run.dir / "report.md"
    rep = Report(run, out)
    rep.plot_dir.mkdir(parents=True, exist_ok=True)
    for old in rep.plot_dir.glob("*.png"):  # plots of an earlier report of a run that changed since
        old.unlink()

    rep.add(f"# Run report: {run.name}")
    data, model = run.config.get("data") or {}, run.config.get("model") or {}
    rep.add(f"Run directory `{run.dir}`; dataset `{data.get('dataset', '?')}`, model `{model.get('arch', '?')}`, "
            f"seed {(run.config.get('run') or {}).get('seed', '?')}. Everything below is read from the stages' "
            "records (`stage.json`, `history.jsonl`, masks, logs); sha256-checked.")
    rep.section("Summary", summary)
    rep.section("Stages", stage_table)
    rep.section("Training curves", training_curves)
    rep.section("Sparsity", sparsity)
    rep.section("Robustness evaluation", robustness)
    rep.section("FLOPs", flops)
    rep.section("Latency (onnxruntime)", latency)
    rep.section("Deployment: compression against the dense baseline", deployment_section)
    rep.add("## Resolved config")
    rep.add("```yaml\n" + run.config_text.rstrip() + "\n```")
    store.atomic_write_text(out, rep.text())
    return out


_SELECTED_ON = {"val_ra": "val RA", "val_sa": "val SA", "test_ra": "test RA", "test_sa": "test SA"}


def summary(rep: Report) -> None:
    row = summarize_run(rep.run)
    if row.get("final_stage") is None:
        rep.add("No stage has produced a model yet.")
        return
    rep.add(f"Final model: stage `{row['final_stage']}`"
            + (f" (training history of `{row['history_stage']}`, best "
               f"{_SELECTED_ON.get(row.get('best_selected_on'), 'val RA')} at epoch {row['best_epoch']})"
               if row.get("history_stage") else "")
            + (f"; evaluated by `{row['evaluate_stage']}`" if row.get("evaluate_stage") else "") + ".")
    rows = []
    for col in (*COLUMNS, *OPTIONAL_COLUMNS):
        value = row.get(col.key)
        if value is None and col.optional:
            continue
        marks = (row.get("corruption_marks") or {}).get(col.key, "") if value is not None else ""
        note = col.note + "".join(f"; {m} {LEGEND[m]}" for m in marks)
        rows.append([col.title, (fmt(value, col.digits) + marks) if not col.flops else flops_text(value), note])
    rep.add(md_table(["quantity", "value", "definition"], rows, ["l", "r", "l"]))
