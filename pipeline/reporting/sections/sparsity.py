"""Report sections on sparsity: each distinct mask's density per layer, a dynamic-sparse stage's
topology over training (its update log, else its per-epoch history), and an early-bird stage's
mask-distance curve. They read the keys the writers emit (pipeline/sparsity/dst/core.py's update
log, early_bird's record), nothing else."""
from __future__ import annotations

from typing import Any

from pipeline.engine.rundir import MASKS, StageRecord
from pipeline.reporting import plots
from pipeline.reporting.format import fmt, num
from pipeline.sparsity.masks import MaskSet
from pipeline.sparsity.record import SparsityRecord


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


def sparsity(rep) -> None:
    seen: dict[str, str] = {}  # sha256 of masks.safetensors -> first stage that wrote it
    for st in rep.run.finished():
        if MASKS not in st.files:
            continue
        sha = st.files[MASKS]
        if sha in seen:
            rep.add(f"`{st.name}` keeps the masks of `{seen[sha]}` unchanged.")
            continue
        seen[sha] = st.name
        masks = MaskSet(st.tensors(MASKS))
        per_layer, overall = masks.layer_densities(), masks.density()
        per_layer = {n: per_layer[n] for n in model_order(per_layer, st.card)}
        path = plots.layer_density(per_layer, rep.plot_path(f"{st.name}_density"),
                                   title=f"{st.name}: density per layer (overall {overall:.3f})", overall=overall)
        rep.add(f"### `{st.name}`: masks")
        rep.add(f"{len(per_layer)} masked layers, overall density {overall:.4f} (sparsity {1 - overall:.2%}).")
        rep.image(path, f"{st.name} density per layer")
    for st in rep.run.finished():
        _updates(rep, st)
        _early_bird(rep, st)


def update_series(rows: list[dict], x_key: str = "step") -> dict[str, Any]:
    """x, connections changed, overall density, ever-active fraction and the Flying Bird+ signals per
    row of a rewire update log (or of a rewire stage's history rows, with x_key "epoch")."""
    return {"x": [row.get(x_key, i + 1) for i, row in enumerate(rows)], "x_label": x_key,
            "changed": [num(row.get("changed")) for row in rows],
            "density": [num(row.get("density")) for row in rows],
            "ever_active": [num(row.get("ever_active")) for row in rows],
            "prune": [num(row.get("prune_signal")) for row in rows],
            "grow": [num(row.get("grow_signal")) for row in rows],
            # an update that acted on the FB+ signals pruned or grew extra
            "adaptive": [bool(row.get("extra_pruned") or row.get("extra_grown")) for row in rows]}


def _updates(rep, st: StageRecord) -> None:
    rec = st.section(SparsityRecord)
    log = rec.updates_file if rec is not None and rec.updates_file in st.files else None
    history = st.history()
    rows = st.jsonl(log) if log is not None else []
    if not rows and not any("density" in row for row in history):
        return
    if rows:
        s = update_series(rows)
        source = f"`{log}` ({len(rows)} updates)"
    else:
        s = update_series([{"epoch": r["epoch"], "density": r.get("density"), "changed": r.get("connections_changed"),
                            "ever_active": r.get("ever_active"), "prune_signal": r.get("fbp_prune_signal"),
                            "grow_signal": r.get("fbp_grow_signal")} for r in history], x_key="epoch")
        source = "the per-epoch history" + (f" (`{log}` has no updates)" if log else "")
    signals = None
    if any(v is not None for v in s["prune"] + s["grow"]):
        adaptive = (st.config.get("sparsity") or {}).get("adaptive") or {}
        signals = {"prune": s["prune"], "grow": s["grow"], "adaptive": s["adaptive"],
                   "prune_threshold": adaptive.get("prune_threshold"), "grow_threshold": adaptive.get("grow_threshold")}
    x_label = {"step": "training step", "epoch": "epoch"}[s["x_label"]]
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
    from an early_bird stage's record (None when there is no curve)."""
    eb = record.get("early_bird")
    if not isinstance(eb, dict) or not eb.get("curve"):
        return None
    curve = eb["curve"]
    return {"epochs": [entry["epoch"] for entry in curve],
            "previous": [num(entry["previous"]) for entry in curve],
            "window": [max(entry["window"]) if entry["window"] else None for entry in curve],
            "threshold": num(eb.get("threshold")), "fired_epoch": num(eb.get("epoch")),
            "window_size": eb.get("window")}


def _early_bird(rep, st: StageRecord) -> None:
    s = early_bird_series(st.data)
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
