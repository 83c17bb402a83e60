"""Report section: each evaluate stage's SA/RA per split, every attack, the best and final
checkpoints side by side, gaps and overfitting, corruption robustness and the security curve
(EvaluationMetrics)."""
from __future__ import annotations

from pipeline.engine.rundir import StageRecord
from pipeline.metrics.evaluation import EvaluationMetrics
from pipeline.corruptions.means import LEGEND, column_means, describe
from pipeline.reporting import plots
from pipeline.reporting.curves import NOTE, curve_plot, curve_table
from pipeline.reporting.format import attack_text, fmt, md_table, num

_FACTS = (
    ("robust_gap", "robust generalization gap{which}: train RA − test RA (canonical)"),
    ("robust_gap_running_train", "gap with the running train-batch accuracy{which} (Robust Bird script's variant)"),
    ("robust_overfitting", "robust overfitting from the training history: test RA at the best-val-RA epoch − at "
                           "the last epoch"),
    ("robust_overfitting_measured", "robust overfitting measured here: test RA of the best checkpoint − of the "
                                    "final one"),
)


def robustness(rep) -> None:
    for st in rep.run.finished("evaluate"):
        m = st.section(EvaluationMetrics)
        holder = rep.run.model_holder(st)
        rep.add(f"### `{st.name}` (model of `{holder.name}`)")
        rows = [[split, fmt(s.n), fmt(s.sa), fmt(s.ra), fmt(s.robust_loss, 4)] for split, s in m.splits.items()]
        if rows:
            rep.add(f"RA under {attack_text(m.attack)} (eval mode); train = the non-augmented train split.")
            rep.add(md_table(["split", "images", "SA (%)", "RA (%)", "robust loss"], rows, ["l", "r", "r", "r", "r"]))
        if m.ra:
            arows = [[name, fmt(r.get("test")), fmt(r.get("val")), fmt(r.get("train")), _n_text(r.get("n")),
                      attack_text(r.get("attack"))] for name, r in m.ra.items()]
            rep.add(md_table(["attack", "test RA", "val RA", "train RA", "n (images)", "parameters"], arows,
                             ["l", "r", "r", "r", "l", "l"]))
        _checkpoints(rep, m)
        which = f" ({m.checkpoint} checkpoint)"
        facts = [f"- {label.format(which=which)}: {fmt(getattr(m, key))} pp" for key, label in _FACTS
                 if num(getattr(m, key)) is not None]
        if facts:
            rep.add("\n".join(facts))
        _rb_script(rep, m.rb_script)
        _corruption(rep, st, m.corruption)
        if m.security_curve is not None:
            rep.add(f"Security curve ({m.security_curve.split} split, n = {fmt(m.security_curve.n)}). {NOTE}")
            rep.add(curve_table({st.name: m.security_curve}))
            rep.image(curve_plot({st.name: m.security_curve}, rep.plot_path(f"{st.name}_security_curve"),
                                 f"{st.name}: robust accuracy against eps"), f"{st.name} security curve")


_RB_ROWS = (("RA_best", "RA best: max test RA over epochs"), ("SA_best", "SA best: max test SA over epochs"),
            ("RA_final", "RA final"), ("SA_final", "SA final"), ("RA_diff", "RA diff (best − final)"),
            ("gap_best", "gap best: max running train acc − RA best"),
            ("gap_final", "gap final: last running train acc − RA final"))


def _rb_script(rep, rb: dict | None) -> None:
    """The Robust Bird script's own summary (`rb_script_metrics: true`): test-selected maxima, each at its
    own epoch, from the per-epoch history; beside, not instead of, the val-selected figures above."""
    if not rb:
        return
    rows = [[label, fmt(rb.get(key))] for key, label in _RB_ROWS if num(rb.get(key)) is not None]
    rep.add(f"Robust Bird script's definitions (per-epoch history, {fmt(rb.get('evaluated_epochs'))} evaluated "
            "epochs; test-selected, so optimistic next to the val-selected figures):")
    rep.add(md_table(["figure", "value (%)"], rows, ["l", "r"]))


def _n_text(n: dict | None) -> str:
    return ", ".join(f"{split} {fmt(v)}" for split, v in (n or {}).items()) or "—"


def _checkpoints(rep, m: EvaluationMetrics) -> None:
    """Best and final checkpoints side by side, when the evaluate stage judged both."""
    if len(m.checkpoints) < 2:
        return
    rows = []
    for which, ck in m.checkpoints.items():
        ra = next(iter(ck["ra"].values()), {})
        rows.append([which, fmt(ck.get("epoch")), fmt(ck["sa"].get("test")), fmt(ra.get("test")),
                     fmt(ra.get("train")), fmt(ck.get("robust_gap")), fmt(ck.get("robust_gap_running_train")),
                     _n_text(ck.get("n"))])
    rep.add(md_table(["checkpoint", "epoch", "test SA", "test RA", "train RA", "gap", "gap (running)", "n (images)"],
                     rows, ["l", "r", "r", "r", "r", "r", "r", "l"]))


def _corruption(rep, st: StageRecord, corr: dict | None) -> None:
    if not corr or not corr.get("per"):
        return
    per = {name: [float(a) for a in accs] for name, accs in corr["per"].items()}
    source = corr.get("source", "?")
    width = max(len(v) for v in per.values())
    severities = corr.get("severities") or list(range(1, width + 1))
    path = plots.corruption(per, rep.plot_path(f"{st.name}_corruption"),
                            title=f"{st.name}: accuracy under corruptions ({source})", severities=severities,
                            clean_acc=num(corr.get("clean_acc")), mean_acc=num(corr.get("mean_acc")))
    extra = ", ".join(text.format(corr[k]) for k, text in (("backend", "backend {}"), ("n", "{} images"),
                                                           ("checkpoint", "{} checkpoint")) if corr.get(k) is not None)
    means = column_means(corr)
    marks = "".join(dict.fromkeys(means["marks_15"] + means["marks_19"]))
    rep.add(f"Corruption robustness ({source} corruptions{'; ' + extra if extra else ''}): "
            f"clean {fmt(corr.get('clean_acc'))} %, "
            f"mean over all corruptions and severities evaluated {fmt(corr.get('mean_acc'))} %; "
            f"15-type mean (RobustBench) {fmt(means['mean_15'])}{means['marks_15']} % "
            f"({means['types_15']} of 15 types)"
            + (f", 19-type mean {fmt(means['mean_19'])}{means['marks_19']} % ({means['types_19']} of 19 types)"
               if means["mean_19"] is not None else "") + ". "
            + " ".join(f"{mark} {LEGEND[mark]}." for mark in marks) + f" Evaluated on: {describe(corr)}.")
    rep.image(path, f"{st.name} corruption accuracy")
    if len(severities) != width:
        severities = list(range(1, width + 1))
    rows = [[name.replace("_", " "), *[fmt(a, 1) for a in accs], fmt(sum(accs) / len(accs), 1) if accs else "—"]
            for name, accs in per.items()]
    rep.add(md_table(["corruption", *[f"severity {s}" for s in severities], "mean"], rows, ["l"] + ["r"] * (width + 1)))
