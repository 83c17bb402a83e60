"""`pipeline report RUN_DIR`: a markdown report, with PNG plots, of everything a run's stages recorded.

    pipeline report runs/quickstart                        # runs/quickstart/report.md + runs/quickstart/plots/*.png
    pipeline report runs/quickstart --out /tmp/r/report.md # plots go beside it, in /tmp/r/plots/

It reads only what the stages wrote (stage.json, history.jsonl, masks.safetensors, a rewire stage's
update log, runtime.json) and every file is checked against the sha256 its stage.json records; nothing
is trained or evaluated. A section whose data the run does not have is left out, and a damaged file
costs its own section only (the report says which file and why).

`load_run` is also what `pipeline compare` reads runs with.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.reporting import plots
from pipeline.engine import store
from pipeline.engine.context import selected_history
from pipeline.engine.errors import CheckpointError, PipelineError

HISTORY = "history.jsonl"
MASKS = "masks.safetensors"
# Update logs of dynamic-sparse stages, by preference; any other *.jsonl a stage wrote also counts.
UPDATE_LOGS = ("updates.jsonl", "rewire.jsonl", "topology.jsonl")


# ---------------------------------------------------------------------------------------------------
# Reading a run


@dataclass
class StageView:
    """One stage of a run as its folder shows it. `record` is its stage.json ({} unless finished)."""

    name: str
    type: str
    status: str  # done | stale | failed | partial | running | pending
    detail: str
    dir: Path
    record: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        return bool(self.record)

    @property
    def metrics(self) -> dict:
        return self.record.get("metrics") or {}

    @property
    def files(self) -> dict[str, str]:
        return self.record.get("files") or {}

    @property
    def seconds(self) -> float | None:
        return (self.record.get("timings") or {}).get("seconds")

    @property
    def config(self) -> dict:
        return self.record.get("config") or {}

    def _verified(self, name: str) -> bytes:
        if name not in self.files:
            raise CheckpointError(f"stage {self.name!r} did not write {name}")
        return store.verify_file(self.dir / name, self.files[name])

    def jsonl(self, name: str) -> list[dict]:
        if name not in self._cache:
            text = self._verified(name).decode("utf-8")
            try:
                self._cache[name] = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{self.dir / name}: not JSON lines ({exc})") from None
        return self._cache[name]

    def history(self, all_rows: bool = False) -> list[dict]:
        """Epoch rows of the weights this stage hands on (stage.json `history_select`, e.g. imp's
        selected round), as StageHandle.history reads them; `all_rows` for every row."""
        rows = self.jsonl(HISTORY) if HISTORY in self.files else []
        return rows if all_rows else selected_history(rows, self.record)

    def tensors(self, name: str) -> dict:
        return store.load_tensors(self.dir / name, self.files.get(name) or self._verified(name))

    def update_log(self) -> str | None:
        """Name of this stage's per-update log (dynamic sparse training), if it wrote one."""
        for name in UPDATE_LOGS:
            if name in self.files:
                return name
        return next((n for n in sorted(self.files) if n.endswith(".jsonl") and n != HISTORY), None)


@dataclass
class RunView:
    dir: Path
    name: str
    config: dict
    config_text: str
    stages: list[StageView]

    def stage(self, name: str | None) -> StageView | None:
        return next((s for s in self.stages if s.name == name), None) if name else None

    def finished(self, stage_type: str | None = None) -> list[StageView]:
        return [s for s in self.stages if s.finished and (stage_type is None or s.type == stage_type)]

    def model_holder(self, st: StageView) -> StageView:
        """The stage whose weights `st` is about (evaluate/export/runtime_check pass their input's along)."""
        seen = set()
        while st.record.get("model_from") and st.record["model_from"] != st.name and st.name not in seen:
            seen.add(st.name)
            nxt = self.stage(st.record["model_from"])
            if nxt is None or not nxt.finished:
                break
            st = nxt
        return st

    def lineage(self, st: StageView) -> list[StageView]:
        """`st` and the stages it descends from through `input` links, upstream first."""
        chain, seen = [], set()
        cur: StageView | None = st
        while cur is not None and cur.name not in seen:
            seen.add(cur.name)
            chain.append(cur)
            cur = self.stage(cur.record.get("input") or cur.config.get("input"))
        return chain[::-1]

    def evaluate_stage(self) -> StageView | None:
        done = self.finished("evaluate")
        return done[-1] if done else None

    def final_model_stage(self) -> StageView | None:
        """The stage holding the run's final model: the weights the last evaluate stage judged, or else
        those of the last finished stage that has a model."""
        ev = self.evaluate_stage()
        if ev is not None:
            return self.model_holder(ev)
        with_model = [s for s in self.finished() if s.record.get("model")]
        return self.model_holder(with_model[-1]) if with_model else None

    def training_stages(self, upto: StageView | None = None) -> list[StageView]:
        """Stages that trained (they record training FLOPs), in the lineage of `upto` or of the whole run."""
        pool = self.lineage(upto) if upto is not None else self.finished()
        return [s for s in pool if s.finished and ((s.record.get("flops") or {}).get("training"))]


def load_run(run_dir: Path | str) -> RunView:
    """Read a run directory (its config.yaml and each stage's folder). Raises PipelineError if it is not one."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise PipelineError(f"{run_dir}: not a run directory (no config.yaml)")
    config = store.read_json_yaml(cfg_path) or {}
    statuses = _statuses(cfg_path, run_dir)
    stages = []
    for st in config.get("stages") or []:
        name, stype = st.get("name"), st.get("type", "?")
        sdir = run_dir / name
        record: dict = {}
        state, detail = statuses.get(name, (None, ""))
        if (sdir / "stage.json").exists():
            try:
                record = store.read_json(sdir / "stage.json")
            except PipelineError as exc:
                state, detail = "damaged", str(exc)
        if state is None:
            state, detail = _plain_status(sdir, record)
        if state == "damaged":
            record = {}  # an altered or incomplete stage contributes nothing; its status line says why
        stages.append(StageView(name=name, type=stype, status=state, detail=detail, dir=sdir, record=record))
    run_name = (config.get("run") or {}).get("name") or run_dir.name
    return RunView(dir=run_dir, name=run_name, config=config, config_text=cfg_path.read_text(encoding="utf-8"),
                   stages=stages)


def _statuses(cfg_path: Path, run_dir: Path) -> dict[str, tuple[str, str]]:
    """done/stale/partial/failed per stage as `pipeline status` sees them; {} when the config no longer
    validates here (e.g. a stage plugin is not installed), and the plain on-disk view is used instead."""
    try:
        from pipeline.engine.config import load_config
        from pipeline.engine.runner import Runner

        runner = Runner(load_config(cfg_path), run_dir, quiet=True)
        return {s.name: (s.state, s.detail) for s in runner.statuses()}
    except Exception:  # any failure here only downgrades the status column
        return {}


def _plain_status(sdir: Path, record: dict) -> tuple[str, str]:
    if record:
        return record.get("status", "done"), ""
    if (sdir / "failed.json").exists():
        try:
            return "failed", store.read_json(sdir / "failed.json").get("error", "")
        except PipelineError as exc:
            return "failed", str(exc)
    if (sdir / "progress" / "manifest.json").exists():
        return "partial", ""
    return "pending", ""


# ---------------------------------------------------------------------------------------------------
# Formatting


def num(value: Any) -> float | None:
    """A finite number, or None (bools, strings, NaN and missing values are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 1000 else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 10 ** -digits):
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


def md_table(headers: list[str], rows: list[list[Any]], align: list[str] | None = None) -> str:
    """A GitHub markdown table; `align` per column is 'l' or 'r' (default: left)."""
    align = align or ["l"] * len(headers)
    cells = [[str(c).replace("|", "\\|").replace("\n", " ") for c in row] for row in rows]
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def attack_text(attack: dict | None) -> str:
    """'PGD-20, eps 8/255, step 2/255, random start, 1 restart' from an AttackConfig dump."""
    if not attack:
        return "unknown attack"
    kind = str(attack.get("kind", "?"))
    parts = []
    if kind == "pgd":
        parts.append(f"PGD-{attack.get('steps', '?')}")
    elif kind == "fgsm_rs":
        parts.append("FGSM-RS")
    else:
        parts.append(kind)
    for key in ("eps", "step"):
        if num(attack.get(key)) is not None:
            parts.append(f"{key} {_over_255(attack[key])}")
    if kind == "pgd" and "random_start" in attack:
        parts.append("random start" if attack["random_start"] else "no random start")
    if num(attack.get("restarts")) is not None:
        r = int(attack["restarts"])
        parts.append(f"{r} restart{'s' if r != 1 else ''}")
    for key in ("norm", "version"):
        if attack.get(key):
            parts.append(f"{key} {attack[key]}")
    return ", ".join(parts)


def _over_255(x: float) -> str:
    scaled = x * 255
    return f"{round(scaled)}/255" if abs(scaled - round(scaled)) < 1e-6 else f"{x:.4g}"


def train_label(stage_config: dict) -> str:
    mode = stage_config.get("mode")
    attack = stage_config.get("attack") or {}
    if mode == "pgd":
        return f"train (running, PGD-{attack.get('steps', '?')} adversarial)"
    if mode == "fast":
        return "train (running, FGSM-RS adversarial)"
    if mode == "clean":
        return "train (running, clean)"
    return "train (running)"


_KEY_METRICS = ("RA_best", "RA_final", "RA_diff", "SA_best", "SA_final", "best_epoch", "density", "test_sa",
                "test_ra", "train_ra", "robust_gap", "robust_overfitting", "sparsity", "parity_max_abs_diff",
                "onnx_bytes", "cpu_b1_median_ms", "cpu_b1_p90_ms")


def key_metrics(metrics: dict, limit: int = 6) -> str:
    keys = [k for k in _KEY_METRICS if num(metrics.get(k)) is not None][:limit]
    if not keys:
        keys = [k for k, v in metrics.items() if num(v) is not None][:4]
    return ", ".join(f"{k} {fmt(metrics[k], 3 if k.endswith('_ms') or k == 'density' else 2)}" for k in keys)


# ---------------------------------------------------------------------------------------------------
# The report


class _Report:
    def __init__(self, run: RunView, out: Path):
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

    def section(self, title: str, body: Callable[[], None]) -> None:
        """Run one section; a damaged or unexpected input costs that section only, with a note."""
        start = len(self.parts)
        self.add(f"## {title}")
        try:
            body()
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
    run = load_run(run_dir)
    out = Path(out) if out is not None else run.dir / "report.md"
    rep = _Report(run, out)
    rep.plot_dir.mkdir(parents=True, exist_ok=True)
    for old in rep.plot_dir.glob("*.png"):  # plots of an earlier report of a run that changed since
        old.unlink()

    rep.add(f"# Run report: {run.name}")
    data, model = run.config.get("data") or {}, run.config.get("model") or {}
    rep.add(f"Run directory `{run.dir}`; dataset `{data.get('dataset', '?')}`, model `{model.get('arch', '?')}`, "
            f"seed {(run.config.get('run') or {}).get('seed', '?')}. Everything below is read from the stages' "
            "records (`stage.json`, `history.jsonl`, masks, logs); sha256-checked.")
    rep.section("Summary", lambda: _summary(rep))
    rep.section("Stages", lambda: _stage_table(rep))
    rep.section("Training curves", lambda: _training(rep))
    rep.section("Sparsity", lambda: _sparsity(rep))
    rep.section("Robustness evaluation", lambda: _evaluation(rep))
    rep.section("FLOPs", lambda: _flops(rep))
    rep.section("Latency (onnxruntime)", lambda: _latency(rep))
    rep.add("## Resolved config")
    rep.add("```yaml\n" + run.config_text.rstrip() + "\n```")
    store.atomic_write_text(out, rep.text())
    return out


def _summary(rep: _Report) -> None:
    from pipeline.reporting.compare import COLUMNS, OPTIONAL_COLUMNS, summarize_run  # compare reads runs through this module

    row = summarize_run(rep.run)
    if row.get("final_stage") is None:
        rep.add("No stage has produced a model yet.")
        return
    lines = [f"Final model: stage `{row['final_stage']}`"
             + (f" (training history of `{row['history_stage']}`, best val RA at epoch {row['best_epoch']})"
                if row.get("history_stage") else "")
             + (f"; evaluated by `{row['evaluate_stage']}`" if row.get("evaluate_stage") else "") + "."]
    rows = []
    for col in (*COLUMNS, *OPTIONAL_COLUMNS):
        value = row.get(col.key)
        if value is None and col.optional:
            continue
        rows.append([col.title, fmt(value, col.digits) if not col.flops else _flops_text(value), col.note])
    rep.add(lines[0])
    rep.add(md_table(["quantity", "value", "definition"], rows, ["l", "r", "l"]))


def _flops_text(value: float | None) -> str:
    if value is None:
        return "—"
    scale, unit = plots.engineering(value)
    return f"{value / scale:.2f} {unit}".strip()


def _stage_table(rep: _Report) -> None:
    rows = []
    for st in rep.run.stages:
        detail = st.detail if st.status != "done" else ""
        metrics = key_metrics(st.metrics) if st.finished else ""
        rows.append([f"`{st.name}`", st.type, st.status, fmt(st.seconds, 1), metrics or detail or ""])
    rep.add(md_table(["stage", "type", "status", "seconds", "key metrics"], rows, ["l", "l", "l", "r", "l"]))


def _training(rep: _Report) -> None:
    from pipeline.metrics.evaluation import summarize_history

    for st in rep.run.finished():
        history = st.history()
        if not history or not any("train_acc" in row for row in history):
            continue
        best_epoch, line = None, ""
        if any(num(row.get("val_ra")) is not None for row in history):
            s = summarize_history(history)
            best_epoch = s["best_epoch"]
            line = (f"Best val RA at epoch {best_epoch}: test RA {fmt(s['RA_best'])} (final {fmt(s['RA_final'])}, "
                    f"robust overfitting {fmt(s['RA_diff'])} pp); test SA {fmt(s['SA_best'])} (final "
                    f"{fmt(s['SA_final'])}). ")
        ev = (st.config.get("eval") or {})
        every = int(ev.get("every") or 1)
        line += (f"{len(history)} epochs; val/test evaluated " + ("every epoch" if every == 1 else f"every {every} epochs")
                 + (f" under {attack_text(ev['attack'])}" if ev.get("attack") else "")
                 + (f" on the first {ev['val_limit']} val / {ev.get('test_limit') or 'all'} test images"
                    if ev.get("val_limit") else "") + ".")
        path = plots.accuracy_curves(history, rep.plot_path(f"{st.name}_accuracy"),
                                     title=f"{st.name} ({st.type}): accuracy per epoch",
                                     train_label=train_label(st.config), best_epoch=best_epoch)
        rep.add(f"### `{st.name}`")
        rep.add(line)
        rep.image(path, f"{st.name} accuracy per epoch")


def model_order(names, card: dict | None) -> list[str]:
    """Weight names in the model's parameter order (safetensors files do not keep an order)."""
    names = list(names)
    order: dict[str, int] = {}
    if card:
        try:
            from pipeline.models.card import build_model

            order = {n: i for i, (n, _) in enumerate(build_model(card).named_parameters())}
        except Exception:  # an architecture this install lacks: fall back to sorted names
            order = {}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def mask_densities(masks: dict) -> tuple[dict[str, float], float]:
    """Per-layer kept fraction and the overall one (weighted by layer size) of a name -> bool tensor map."""
    kept = {n: int(m.sum()) for n, m in masks.items()}
    sizes = {n: m.numel() for n, m in masks.items()}
    total = sum(sizes.values())
    return {n: kept[n] / sizes[n] for n in masks}, (sum(kept.values()) / total if total else 1.0)


def _sparsity(rep: _Report) -> None:
    seen: dict[str, str] = {}  # sha256 of masks.safetensors -> first stage that wrote it
    for st in rep.run.finished():
        if MASKS not in st.files:
            continue
        sha = st.files[MASKS]
        if sha in seen:
            rep.add(f"`{st.name}` keeps the masks of `{seen[sha]}` unchanged.")
            continue
        seen[sha] = st.name
        per_layer, overall = mask_densities(st.tensors(MASKS))
        per_layer = {n: per_layer[n] for n in model_order(per_layer, st.record.get("model"))}
        path = plots.layer_density(per_layer, rep.plot_path(f"{st.name}_density"),
                                   title=f"{st.name}: density per layer (overall {overall:.3f})", overall=overall)
        rep.add(f"### `{st.name}`: masks")
        rep.add(f"{len(per_layer)} masked layers, overall density {overall:.4f} (sparsity {1 - overall:.2%}).")
        rep.image(path, f"{st.name} density per layer")
    for st in rep.run.finished():
        _updates(rep, st)
        _early_bird(rep, st)


def _first(row: dict, keys: tuple[str, ...]) -> Any:
    return next((row[k] for k in keys if k in row and row[k] is not None), None)


def _total(value: Any) -> float | None:
    if isinstance(value, dict):
        values = [_total(v) for v in value.values()]
        values = [v for v in values if v is not None]
        return sum(values) if values else None
    return num(value)


def update_series(rows: list[dict], sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """x, connections changed, overall density and ever-active fraction per row of a rewire update log.

    Tolerant about key names: a count may be a number or a per-layer dict (summed); a density may be an
    overall number or a per-layer dict (weighted by layer sizes when known)."""
    x_key = next((k for k in ("step", "global_step", "update", "iteration", "epoch") if rows and k in rows[0]), None)
    out: dict[str, Any] = {"x": [], "changed": [], "density": [], "ever_active": [], "prune": [], "grow": [],
                           "adaptive": [], "x_label": x_key or "update"}
    for i, row in enumerate(rows):
        out["x"].append(row.get(x_key, i + 1) if x_key else i + 1)
        changed = _total(_first(row, ("changed", "connections_changed", "n_changed", "num_changed", "swapped")))
        if changed is None:
            parts = [_total(row.get(k)) for k in ("pruned", "grown", "n_pruned", "n_grown")]
            parts = [p for p in parts if p is not None]
            changed = sum(parts) if parts else None
        out["changed"].append(changed)
        dens = _first(row, ("density", "overall_density", "densities", "layer_densities"))
        if isinstance(dens, dict):
            w = {n: (sizes or {}).get(n, 1) for n in dens}
            total = sum(w.values())
            dens = sum(num(d) * w[n] for n, d in dens.items() if num(d) is not None) / total if total else None
        out["density"].append(num(dens))
        out["ever_active"].append(_total(_first(row, ("ever_active", "ever_active_fraction", "itop_rate", "itop"))))
        out["prune"].append(num(_first(row, ("prune_signal", "fbp_prune_signal"))))
        out["grow"].append(num(_first(row, ("grow_signal", "fbp_grow_signal"))))
        # FB+ logs `adaptive` = signals in force; an update that acted on them pruned or grew extra
        out["adaptive"].append(bool(row.get("extra_pruned") or row.get("extra_grown")))
    return out


def _updates(rep: _Report, st: StageView) -> None:
    log = st.update_log()
    history = st.history()
    rows = st.jsonl(log) if log is not None else []
    if not rows and not any("density" in row for row in history):
        return
    sizes = None
    if MASKS in st.files:
        sizes = {n: m.numel() for n, m in st.tensors(MASKS).items()}
    if rows:
        s = update_series(rows, sizes)
        source = f"`{log}` ({len(rows)} updates)"
    else:
        s = update_series([{"epoch": r["epoch"], "density": r.get("density"), "changed": r.get("connections_changed"),
                            "ever_active": r.get("ever_active"), "prune_signal": r.get("fbp_prune_signal"),
                            "grow_signal": r.get("fbp_grow_signal")} for r in history], sizes)
        source = "the per-epoch history" + (f" (`{log}` has no updates)" if log else "")
    signals = None
    if any(v is not None for v in s["prune"] + s["grow"]):
        adaptive = ((st.config.get("sparsity") or {}).get("adaptive")) or {}
        signals = {"prune": s["prune"], "grow": s["grow"], "adaptive": s["adaptive"],
                   "prune_threshold": adaptive.get("prune_threshold"), "grow_threshold": adaptive.get("grow_threshold")}
    x_label = {"step": "training step", "epoch": "epoch"}.get(s["x_label"], s["x_label"].replace("_", " "))
    path = plots.rewire_updates(s["x"], s["changed"], s["density"], rep.plot_path(f"{st.name}_updates"),
                                title=f"{st.name}: topology over training", x_label=x_label,
                                ever_active=s["ever_active"], signals=signals)
    rep.add(f"### `{st.name}`: topology over training")
    changed = [c for c in s["changed"] if c is not None]
    dens = [d for d in s["density"] if d is not None]
    facts = [f"From {source}"]
    if changed:
        facts.append(f"{fmt(int(sum(changed)))} connections changed in all")
    if dens:
        facts.append(f"density {dens[0]:.4f} at the first update, {dens[-1]:.4f} at the last")
    ever = [e for e in s["ever_active"] if e is not None]
    if ever:
        facts.append(f"{ever[-1]:.2%} of the prunable weights were active at some point")
    if signals:
        facts.append(f"{sum(s['adaptive'])} update(s) pruned or grew extra on the Flying Bird+ signals")
    rep.add("; ".join(facts) + ".")
    rep.image(path, f"{st.name} topology updates")


def early_bird_series(record: dict) -> dict | None:
    """Epochs, distance to the previous mask, max distance in the window, threshold and the firing epoch
    from a stage's `early_bird` record (None when there is no curve)."""
    eb = record.get("early_bird")
    if not isinstance(eb, dict):
        return None
    curve = eb.get("curve") or eb.get("distances") or []
    if not curve:
        return None
    epochs, prev, window = [], [], []
    fired = _first(eb, ("epoch", "found_epoch", "fired_epoch", "emerged_epoch"))
    for i, entry in enumerate(curve):
        if not isinstance(entry, dict):  # a bare list of distances
            entry = {"previous": entry}
        e = entry.get("epoch") if entry.get("epoch") is not None else i + 1
        epochs.append(e)
        prev.append(num(_first(entry, ("previous", "distance"))))
        w = entry.get("window")
        window.append(max(w) if isinstance(w, list) and w else num(w) if not isinstance(w, list) else None)
        if fired is None and entry.get("fired"):
            fired = e
    return {"epochs": epochs, "previous": prev, "window": window, "threshold": num(eb.get("threshold")),
            "fired_epoch": num(fired), "window_size": eb.get("window") if num(eb.get("window")) else None}


def _early_bird(rep: _Report, st: StageView) -> None:
    s = early_bird_series(st.record)
    if s is None:
        return
    path = plots.early_bird_curve(s["epochs"], s["previous"], s["window"], rep.plot_path(f"{st.name}_early_bird"),
                                  title=f"{st.name}: early-bird mask distance", threshold=s["threshold"],
                                  fired_epoch=s["fired_epoch"])
    rep.add(f"### `{st.name}`: early bird")
    found = (f"the early bird was drawn at epoch {fmt(s['fired_epoch'], 0)}" if s["fired_epoch"] is not None
             else "no early bird emerged")
    rep.add(f"Normalised Hamming distance between successive epoch masks ({len(s['epochs'])} masks"
            + (f", window {s['window_size']}" if s["window_size"] else "")
            + (f", threshold {s['threshold']:g}" if s["threshold"] is not None else "") + f"); {found}.")
    rep.image(path, f"{st.name} early-bird distance")


def _evaluation(rep: _Report) -> None:
    for st in rep.run.finished("evaluate"):
        m = st.metrics
        holder = rep.run.model_holder(st)
        rep.add(f"### `{st.name}` (model of `{holder.name}`)")
        rows = [[split, fmt(m.get(f"{split}_n")), fmt(m.get(f"{split}_sa")), fmt(m.get(f"{split}_ra")),
                 fmt(m.get(f"{split}_robust_loss"), 4)]
                for split in ("train", "val", "test") if f"{split}_sa" in m or f"{split}_ra" in m]
        if rows:
            rep.add(f"RA under {attack_text(m.get('attack'))} (eval mode); train = the non-augmented train split.")
            rep.add(md_table(["split", "images", "SA (%)", "RA (%)", "robust loss"], rows, ["l", "r", "r", "r", "r"]))
        attacks = m.get("ra") if isinstance(m.get("ra"), dict) else {}
        if attacks:
            arows = [[name, fmt((r or {}).get("test")), fmt((r or {}).get("val")), fmt((r or {}).get("train")),
                      attack_text((r or {}).get("attack"))] for name, r in attacks.items()]
            rep.add(md_table(["attack", "test RA", "val RA", "train RA", "parameters"], arows,
                             ["l", "r", "r", "r", "l"]))
        _checkpoints(rep, m)
        facts = []
        which = f" ({m['checkpoint']} checkpoint)" if m.get("checkpoint") else ""
        for key, label in (("robust_gap", f"robust generalization gap{which}: train RA − test RA (canonical)"),
                           ("robust_gap_running_train", f"gap with the running train-batch accuracy{which} "
                                                        "(Robust Bird script's variant)"),
                           ("robust_overfitting", "robust overfitting from the training history: test RA at the "
                                                  "best-val-RA epoch − at the last epoch"),
                           ("robust_overfitting_measured", "robust overfitting measured here: test RA of the best "
                                                           "checkpoint − of the final one")):
            if num(m.get(key)) is not None:
                facts.append(f"- {label}: {fmt(m[key])} pp")
        if facts:
            rep.add("\n".join(facts))
        _corruption(rep, st, m.get("corruption"))


def _checkpoints(rep: _Report, m: dict) -> None:
    """Best and final checkpoints side by side, when the evaluate stage judged both."""
    cks = m.get("checkpoints")
    if not isinstance(cks, dict) or len(cks) < 2:
        return
    rows = []
    for which, ck in cks.items():
        ra = next(iter((ck.get("ra") or {}).values()), {}) or {}
        rows.append([which, fmt(ck.get("epoch")), fmt((ck.get("sa") or {}).get("test")), fmt(ra.get("test")),
                     fmt(ra.get("train")), fmt(ck.get("robust_gap")), fmt(ck.get("robust_gap_running_train"))])
    rep.add(md_table(["checkpoint", "epoch", "test SA", "test RA", "train RA", "gap", "gap (running)"], rows,
                     ["l", "r", "r", "r", "r", "r", "r"]))


def _corruption(rep: _Report, st: StageView, corr: Any) -> None:
    if not isinstance(corr, dict) or not corr.get("per"):
        return
    per = {name: [float(a) for a in accs] for name, accs in corr["per"].items()}
    source = corr.get("source", "?")
    severities = corr.get("severities") or list(range(1, max(len(v) for v in per.values()) + 1))
    path = plots.corruption(per, rep.plot_path(f"{st.name}_corruption"),
                            title=f"{st.name}: accuracy under corruptions ({source})", severities=severities,
                            clean_acc=num(corr.get("clean_acc")), mean_acc=num(corr.get("mean_acc")))
    extra = ", ".join(text.format(corr[k]) for k, text in (("backend", "backend {}"), ("n", "{} images"),
                                                           ("checkpoint", "{} checkpoint")) if corr.get(k) is not None)
    rep.add(f"Corruption robustness ({source} corruptions{'; ' + extra if extra else ''}): "
            f"clean {fmt(corr.get('clean_acc'))} %, "
            f"mean over all corruptions and severities {fmt(corr.get('mean_acc'))} %"
            + (f", mean over the 15 standard types {fmt(corr.get('mean_acc_15'))} %"
               if num(corr.get("mean_acc_15")) is not None else "") + ".")
    rep.image(path, f"{st.name} corruption accuracy")
    width = max(len(v) for v in per.values())
    if len(severities) != width:
        severities = list(range(1, width + 1))
    rows = [[name.replace("_", " "), *[fmt(a, 1) for a in accs], fmt(sum(accs) / len(accs), 1) if accs else "—"]
            for name, accs in per.items()]
    rep.add(md_table(["corruption", *[f"severity {s}" for s in severities], "mean"], rows, ["l"] + ["r"] * (width + 1)))


def _flops(rep: _Report) -> None:
    stages = [s for s in rep.run.finished() if isinstance(s.record.get("flops"), dict)]
    if not stages:
        return
    names, inference, training, rows = [], [], [], []
    for st in stages:
        inf = st.record["flops"].get("inference") or {}
        tr = st.record["flops"].get("training") or {}
        names.append(st.name)
        inference.append((num(inf.get("dense_flops")), num(inf.get("sparse_flops"))))
        training.append((num(tr.get("paper")), num(tr.get("corrected"))))
        rows.append([f"`{st.name}`", _flops_text(num(inf.get("dense_flops"))), _flops_text(num(inf.get("sparse_flops"))),
                     fmt(num(inf.get("ratio")), 3), _flops_text(num(tr.get("paper"))),
                     _flops_text(num(tr.get("corrected"))), fmt(tr.get("images"))])
    path = plots.flops(names, inference, training, rep.plot_path("flops"))
    rep.add(md_table(["stage", "inference dense (per image)", "inference sparse", "ratio", "training (paper)",
                      "training (corrected)", "images seen"], rows, ["l", "r", "r", "r", "r", "r", "r"]))
    convention = next((s.record["flops"].get("convention") for s in stages if s.record["flops"].get("convention")), None)
    if convention:
        rep.add(f"Convention: {convention}.")
    rep.image(path, "FLOPs per stage")


def _latency(rep: _Report) -> None:
    for st in rep.run.finished():
        runtime = st.record.get("runtime")
        if not isinstance(runtime, dict) or not runtime.get("providers"):
            continue
        providers = runtime["providers"]
        rows, ok = [], {}
        for prov, res in providers.items():
            if res.get("status") != "ok":
                rows.append([prov, res.get("status", "?"), "", "", "", "", res.get("reason", "")])
                continue
            ok[prov] = res
            for b, r in sorted(res.get("per_batch", {}).items(), key=lambda kv: int(kv[0])):
                rows.append([prov, "ok", b, fmt(r.get("median_ms"), 3), fmt(r.get("p90_ms"), 3),
                             fmt(r.get("p99_ms"), 3), fmt(r.get("throughput_img_s"), 0)])
        rep.add(f"### `{st.name}`" + (f": `{runtime['model']}`" if runtime.get("model") else ""))
        rep.add(md_table(["provider", "status", "batch", "median (ms)", "p90 (ms)", "p99 (ms)", "images/s"], rows,
                         ["l", "l", "r", "r", "r", "r", "r"]))
        envs = [f"{p}: {res['environment'].get('cpu', '')}, {res['environment'].get('intra_op_threads', '?')} "
                f"intra-op threads, onnxruntime {res['environment'].get('onnxruntime', '?')}"
                for p, res in ok.items() if isinstance(res.get("environment"), dict)]
        if envs:
            rep.add("Measured on " + "; ".join(envs) + ".")
        if ok:
            rep.image(plots.latency(ok, rep.plot_path(f"{st.name}_latency"),
                                    title=f"{st.name}: onnxruntime latency and throughput"), f"{st.name} latency")
