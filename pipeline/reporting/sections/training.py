"""Report sections: the stage table and each training stage's accuracy curves."""
from __future__ import annotations

from pipeline.metrics.evaluation import selection_key, summarize_history
from pipeline.reporting import plots
from pipeline.reporting.format import attack_text, fmt, key_metrics, md_table, train_label


def stage_table(rep) -> None:
    rows = []
    for st in rep.run.stages:
        detail = st.detail if st.status != "done" else ""
        metrics = key_metrics(st.metrics) if st.finished else ""
        rows.append([f"`{st.name}`", st.type, st.status, fmt(st.seconds, 1), metrics or detail or ""])
    rep.add(md_table(["stage", "type", "status", "seconds", "key metrics"], rows, ["l", "l", "l", "r", "l"]))


def training_curves(rep) -> None:
    for st in rep.run.finished():
        history = st.history()
        if not history or not any("train_acc" in row for row in history):
            continue
        best_epoch, line = None, ""
        if selection_key(history) == "val_ra":
            s = summarize_history(history, "val_ra")
            best_epoch = s["best_epoch"]
            line = (f"Best val RA at epoch {best_epoch}: test RA {fmt(s['RA_best'])} (final {fmt(s['RA_final'])}, "
                    f"robust overfitting {fmt(s['RA_diff'])} pp); test SA {fmt(s['SA_best'])} (final "
                    f"{fmt(s['SA_final'])}). ")
        ev = st.config.get("eval") or {}
        every = int(ev.get("every") or 1)
        ns = {split: sorted({row[f"{split}_n"] for row in history if row.get(f"{split}_n") is not None})
              for split in ("val", "test")}  # recorded per row since history rows carry n
        n_text = " and ".join(f"{'/'.join(map(fmt, v))} {split}" for split, v in ns.items() if v)
        line += (f"{len(history)} epochs; val/test evaluated " + ("every epoch" if every == 1 else f"every {every} epochs")
                 + (f" under {attack_text(ev['attack'])}" if ev.get("attack") else "")
                 + (f" on n = {n_text} images" if n_text else
                    f" on the first {ev['val_limit']} val / {ev.get('test_limit') or 'all'} test images"
                    if ev.get("val_limit") else "") + "." + _numerics(st.config))
        path = plots.accuracy_curves(history, rep.plot_path(f"{st.name}_accuracy"),
                                     title=f"{st.name} ({st.type}): accuracy per epoch",
                                     train_label=train_label(st.config), best_epoch=best_epoch)
        rep.add(f"### `{st.name}`")
        rep.add(line)
        rep.image(path, f"{st.name} accuracy per epoch")


def _numerics(config: dict) -> str:
    """The training numerics as resolved (absent in records older than the `precision` key)."""
    precision = config.get("precision")
    if precision is None:
        return ""
    if precision == "bf16":
        return (" Trained under bf16 autocast (forward, backward and training attack; evaluation in fp32)"
                + (", channels_last." if config.get("channels_last") else "."))
    return f" Trained in {precision}."
