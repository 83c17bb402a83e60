"""The summary of one run in the layout of the SW headline table (spec §6.1): `summarize_run` and the
columns it fills. `pipeline compare` puts these rows side by side; the report shows one.

The run's final model is the one its last `evaluate` stage judged (followed through stage.json
`model_from`); RA/SA best/final come from the training history of that stage (or the nearest stage
upstream that has one); training FLOPs sum every stage in its `input` lineage that trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exports.runtime_record import RuntimeRecord
from pipeline.corruptions.means import column_means, describe
from pipeline.engine.errors import PipelineError
from pipeline.engine.rundir import MASKS, RunDir, StageRecord
from pipeline.metrics.evaluation import EvaluationMetrics, selection_key, summarize_history
from pipeline.metrics.flops import FlopsRecord
from pipeline.reporting.format import attack_text, num
from pipeline.sparsity.masks import MaskSet


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
    Column("ra_n", "RA n", "test images behind RA best / final (the training stage's per-epoch evaluation)",
           optional=True),
    Column("corruption_mean_15", "Corruption mean (15)", "unweighted mean accuracy (%) over the 15 standard "
           "corruption types × severities (RobustBench's CIFAR-10-C convention)", optional=True),
    Column("corruption_mean_19", "Corruption mean (19)", "unweighted mean accuracy (%) over all 19 types "
           "(the 15 standard + speckle noise, gaussian blur, spatter, saturate) × severities", optional=True),
    Column("cpu_b1_median_ms", "CPU b1 median (ms)", "onnxruntime CPU latency, batch 1, median", digits=3,
           optional=True),
)


def _last_runtime(run: RunDir) -> RuntimeRecord | None:
    for st in reversed(run.finished()):
        rt = st.section(RuntimeRecord)
        if rt is not None and rt.providers:
            return rt
    return None


def _history_stage(run: RunDir, final: StageRecord) -> StageRecord | None:
    """The nearest stage at or above the final model that logged per-epoch test figures: the training
    that made the final weights. A clean stage (test SA only) is that stage too, so a clean fine-tune
    after PGD-AT reports its own SA and no RA curve, not the robust stage's curve above it."""
    for st in reversed(run.lineage(final)):
        if any(num(row.get("test_ra")) is not None or num(row.get("test_sa")) is not None for row in st.history()):
            return st
    return None


def _inference_flops(final: StageRecord) -> tuple[float | None, float | None]:
    """(sparse, dense) per-image FLOPs of the final model. Counted from its card and saved masks when it
    has masks (exact for the weights kept, whichever epoch they come from), else from its FLOPs record."""
    card = final.card
    flops = final.section(FlopsRecord)
    if MASKS not in final.files or not card:
        if flops is not None and flops.inference is not None:
            return flops.inference.sparse_flops, flops.inference.dense_flops
        if not card:
            return None, None
    from pipeline.metrics.flops import count_macs, inference_flops
    from pipeline.models.card import build_model

    densities = MaskSet(final.tensors(MASKS)).layer_densities() if MASKS in final.files else None
    layers = count_macs(build_model(card), (card["in_chans"], *card["input_size"]))
    try:
        res = inference_flops(layers, densities)
    except ValueError as exc:
        raise PipelineError(f"{final.dir / MASKS}: masks do not fit model {card.get('arch')!r}: {exc}") from None
    return float(res["sparse_flops"]), float(res["dense_flops"])


def summarize_run(run: RunDir, label: str | None = None) -> dict[str, Any]:
    """The comparison row of one run (raw numbers, None where the run has no such figure) and where each
    figure came from."""
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
        # as training selects; a history without val figures can only be read on test RA, or test SA for a
        # clean stage (noted per run)
        has_ra = any(num(r.get("test_ra")) is not None for r in history)
        key = selection_key(history) or ("test_ra" if has_ra else "test_sa")
        s = summarize_history(history, key)
        row.update({"history_stage": hist_stage.name, "best_epoch": s["best_epoch"], "best_selected_on": key,
                    "ra_best": s["RA_best"], "ra_final": s["RA_final"], "ra_diff": s["RA_diff"],
                    "sa_best": s["SA_best"], "sa_final": s["SA_final"], "sa_diff": s["SA_diff"]})
        # history rows record the images they were measured on (older runs do not)
        ns = {row.get("test_n") for row in history if num(row.get("test_ra")) is not None} - {None}
        row["ra_n"] = ns.pop() if len(ns) == 1 else None
        eval_attack = (hist_stage.config.get("eval") or {}).get("attack")
        row["history_attack"] = attack_text(eval_attack) if eval_attack and has_ra else None

    trained = run.training_stages(final)
    if trained:
        costs = [st.section(FlopsRecord).training for st in trained]
        row["training_stages"] = [s.name for s in trained]
        row["train_flops_paper"] = sum(c.paper for c in costs)
        row["train_flops_corrected"] = sum(c.corrected for c in costs)
    row["inference_flops"], row["inference_flops_dense"] = _inference_flops(final)

    if MASKS in final.files:
        row["density"] = MaskSet(final.tensors(MASKS)).density()

    m = ev.section(EvaluationMetrics) if ev is not None else None
    if m is not None:
        # the paper's gap is at the final epoch; with `checkpoints: selected` only the selected one was measured
        if m.robust_gap_final is not None:
            row["robust_gap"], row["gap_checkpoint"] = m.robust_gap_final, "final"
            row["robust_gap_running_train"] = num((m.checkpoints.get("final") or {}).get("robust_gap_running_train"))
        else:
            row["robust_gap"], row["gap_checkpoint"] = m.robust_gap, m.checkpoint
            row["robust_gap_running_train"] = m.robust_gap_running_train
        for split, key in (("train", "train_ra"), ("test", "test_ra")):
            row[key] = m.split(split).ra if m.split(split) else None
        row["test_sa"] = m.split("test").sa if m.split("test") else None
        row["train_n"] = m.split("train").n if m.split("train") else None
        row["test_n"] = m.split("test").n if m.split("test") else None
        row["eval_attack"] = attack_text(m.attack)
        # the first attack is the one behind test_ra and the gap; columns only for the further ones
        row["ra_attacks"] = {name: {"test": num(r.get("test")), "attack": attack_text(r.get("attack")),
                                    "n": (r.get("n") or {}).get("test")}
                             for name, r in list(m.ra.items())[1:]}
        if m.corruption is not None:
            means = column_means(m.corruption)
            row.update({"corruption_mean_15": means["mean_15"], "corruption_mean_19": means["mean_19"],
                        "corruption_marks": {"corruption_mean_15": means["marks_15"],
                                             "corruption_mean_19": means["marks_19"]},
                        "corruption_mean_acc": num(m.corruption.get("mean_acc")),  # every type evaluated
                        "corruption_source": m.corruption.get("source"),
                        "corruption_described": describe(m.corruption)})
        if m.security_curve is not None:
            row["security_curve"] = m.security_curve
    rt = _last_runtime(run)
    if rt is not None:
        b1 = rt.batch("cpu", 1) or {}
        row["cpu_b1_median_ms"] = num(b1.get("median_ms"))
        row["cpu_b1_p90_ms"] = num(b1.get("p90_ms"))
    return row
