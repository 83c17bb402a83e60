"""PNG plots for run reports: headless (each Figure drawn on its own Agg canvas; pyplot and the global
backend are never touched, so no display is needed and an interactive session is left alone).

Every function takes plain numbers (no run-directory knowledge), writes one PNG atomically and returns
its path. Figures use matplotlib's default style whatever the user's matplotlibrc says, and the PNGs
carry no software/version metadata, so the same numbers give the same file.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec

import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.engine import store
from pipeline.reporting.format import engineering, num

P = ParamSpec("P")

# Fixed look: readable at the size a markdown viewer shows a PNG (about 900 px wide).
_STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8.5,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
}
_DPI = 110
COLORS = {"train": "#7f7f7f", "val_sa": "#9ecae1", "val_ra": "#3182bd", "test_sa": "#fdae6b", "test_ra": "#e6550d",
          "best": "#31a354", "a": "#3182bd", "b": "#e6550d", "c": "#31a354", "d": "#756bb1"}


def _styled(fn: Callable[P, Path]) -> Callable[P, Path]:
    """Run a plot function under the fixed style (many rcParams are read while drawing, not at creation)."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Path:
        with matplotlib.style.context(["default", _STYLE]):
            return fn(*args, **kwargs)
    return wrapper


def _figure(width: float, height: float, ncols: int = 1):
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    with store.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, metadata={"Software": None})
    return path


@_styled
def accuracy_curves(history: Sequence[Mapping], path: Path, *, title: str, train_label: str = "train (running)",
                    best_epoch: int | None = None) -> Path:
    """SA/RA per epoch: running train accuracy, val and test SA/RA, a marker at the best-val-RA epoch
    (where robust overfitting starts, shaded after) and dotted lines where the learning rate changes."""
    fig, (ax,) = _figure(9.5, 4.4)
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [num(row.get("train_acc")) for row in history], color=COLORS["train"], lw=1.5, label=train_label)
    for key, style, label in (("val_sa", "--", "val SA"), ("val_ra", "-", "val RA"),
                              ("test_sa", "--", "test SA"), ("test_ra", "-", "test RA")):
        pts = [(row["epoch"], num(row.get(key))) for row in history if num(row.get(key)) is not None]
        if pts:
            ax.plot(*zip(*pts), style, marker="o" if len(pts) <= 40 else None, ms=3.5, color=COLORS[key], lw=1.6,
                    label=label)
    first_change = True
    for prev, row in zip(history, history[1:]):
        if num(prev.get("lr")) is not None and num(row.get("lr")) is not None and row["lr"] != prev["lr"]:
            x = row["epoch"] - 0.5
            ax.axvline(x, color="#777777", ls=":", lw=1.2, label="lr change" if first_change else None)
            ax.annotate(f"lr {row['lr']:.3g}", (x, 0.03), xycoords=("data", "axes fraction"), fontsize=8,
                        color="#555555", rotation=90, ha="right", va="bottom", xytext=(-2, 0), textcoords="offset points")
            first_change = False
    if best_epoch is not None:
        ax.axvline(best_epoch, color=COLORS["best"], lw=1.8, alpha=0.85, label=f"best val RA (epoch {best_epoch})")
        if epochs and max(epochs) > best_epoch:
            ax.axvspan(best_epoch, max(epochs), color=COLORS["best"], alpha=0.07, lw=0,
                       label="after best: robust overfitting")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.set_ylim(0, 100)
    if epochs:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    return _save(fig, path)


@_styled
def layer_density(densities: Mapping[str, float], path: Path, *, title: str, overall: float | None = None) -> Path:
    """Horizontal bars: kept fraction per layer (top = first layer), with the overall density as a line."""
    names = list(densities)
    height = max(2.6, 0.28 * len(names) + 1.4)
    fig, (ax,) = _figure(8.0, height)
    ys = range(len(names))
    values = [densities[n] for n in names]
    bars = ax.barh(list(ys), values, color=COLORS["a"], height=0.7)
    for bar, v in zip(bars, values):
        ax.text(v + 0.01, bar.get_y() + bar.get_height() / 2, f"{v:.3f}", va="center", fontsize=7.5,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    if overall is not None:
        ax.axvline(overall, color=COLORS["b"], ls="--", lw=1.4, label=f"overall {overall:.3f}")
        ax.legend(loc="lower right")
    ax.set_yticks(list(ys), labels=names, fontsize=7.5 if len(names) > 12 else 9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.09)
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("density (fraction of weights kept)")
    ax.set_title(title)
    ax.grid(axis="y", visible=False)
    return _save(fig, path)


@_styled
def rewire_updates(steps: Sequence[float], changed: Sequence[float | None], density: Sequence[float | None], path: Path,
                   *, title: str, x_label: str = "training step", ever_active: Sequence[float | None] | None = None,
                   signals: Mapping[str, Any] | None = None) -> Path:
    """Connections changed (mask entries flipped) at each topology update; overall density and the
    fraction of weights ever active over training; with `signals` (Flying Bird+: "prune", "grow" per
    update, optional "prune_threshold", "grow_threshold", and "adaptive": per update, whether it pruned or grew
    extra on them) a third panel of those."""
    fig, axes = _figure(14.0 if signals else 10.0, 4.4 if signals else 3.8, ncols=3 if signals else 2)
    left, right = axes[0], axes[1]
    pts = [(s, c) for s, c in zip(steps, changed) if num(c) is not None]
    if pts:
        left.plot(*zip(*pts), marker="o", ms=3, lw=1.2, color=COLORS["b"])
        left.set_ylim(bottom=0)
    else:
        left.text(0.5, 0.5, "not logged", ha="center", va="center", transform=left.transAxes, color="#888888")
    left.set_ylabel("connections changed")
    left.set_title("connections changed per update")
    pts = [(s, d) for s, d in zip(steps, density) if num(d) is not None]
    if pts:
        right.plot(*zip(*pts), marker="o", ms=3, lw=1.4, color=COLORS["a"], label="density")
    if ever_active is not None:
        pts = [(s, e) for s, e in zip(steps, ever_active) if num(e) is not None]
        if pts:
            right.plot(*zip(*pts), ls="--", lw=1.4, color=COLORS["c"], label="ever active")
    right.set_ylim(0, 1.02)
    right.set_ylabel("fraction of prunable weights")
    right.set_title("density over training")
    if right.get_legend_handles_labels()[0]:
        right.legend(loc="best")
    if signals:
        ax = axes[2]
        for key, color, label in (("prune", COLORS["b"], "prune signal (rising gap)"),
                                  ("grow", COLORS["c"], "grow signal (flat robust loss)")):
            pts = [(s, v) for s, v in zip(steps, signals.get(key) or []) if num(v) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, lw=1.3, color=color, label=label)
            if num(signals.get(f"{key}_threshold")) is not None:
                ax.axhline(signals[f"{key}_threshold"], color=color, ls=":", lw=1.2, label=f"{key} threshold")
        marks = [s for s, a in zip(steps, signals.get("adaptive") or []) if a]
        for i, s in enumerate(marks):
            ax.axvline(s, color="#999999", lw=0.8, alpha=0.6, label="extra prune / grow" if i == 0 else None)
        ax.set_ylim(-0.03, 1.05)
        ax.set_ylabel("fraction of the window")
        ax.set_title("Flying Bird+ signals")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=7.5, frameon=False)
    xs = [x for x in steps if num(x) is not None]
    for ax in axes:
        if xs:
            pad = max((max(xs) - min(xs)) * 0.04, 0.5)
            ax.set_xlim(min(xs) - pad, max(xs) + pad)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(x_label)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


@_styled
def early_bird_curve(epochs: Sequence[float], previous: Sequence[float | None], window_max: Sequence[float | None],
                     path: Path, *, title: str, threshold: float | None = None, fired_epoch: float | None = None) -> Path:
    """Normalised Hamming distance between successive epoch masks, and the largest distance inside the
    detector's window, with the stopping threshold and the epoch where the early bird was drawn."""
    fig, (ax,) = _figure(9.5, 3.8)
    pts = [(e, p) for e, p in zip(epochs, previous) if num(p) is not None]
    if pts:
        ax.plot(*zip(*pts), marker="o", ms=3.5, lw=1.5, color=COLORS["a"], label="distance to previous mask")
    pts = [(e, w) for e, w in zip(epochs, window_max) if num(w) is not None]
    if pts:
        ax.plot(*zip(*pts), marker="s", ms=3.5, lw=1.5, color=COLORS["b"], label="max distance in window")
    if threshold is not None:
        ax.axhline(threshold, color="#555555", ls="--", lw=1.2, label=f"threshold {threshold:g}")
    if fired_epoch is not None:
        ax.axvline(fired_epoch, color=COLORS["best"], lw=1.6, label=f"early bird: epoch {fired_epoch:g}")
    ax.set_ylim(bottom=0)
    xs = [e for e in epochs if num(e) is not None]
    if xs:
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("normalised Hamming distance")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    return _save(fig, path)


def _grouped_bars(ax, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None], str]], *,
                  value_fmt: str = "{:.3g}") -> None:
    n = max(len(series), 1)
    width = 0.8 / n
    top = max([v for _, values, _ in series for v in values if v is not None] or [1.0])
    ax.set_ylim(0, top * 1.3)  # headroom for the value labels and a legend above the bars
    for i, (name, values, color) in enumerate(series):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(labels))]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, heights, width=width * 0.95, color=color, label=name)
        for bar, v in zip(bars, values):
            if v is not None:
                ax.annotate(value_fmt.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7.5, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(range(len(labels)), labels=labels, rotation=20 if len(labels) > 3 else 0,
                  ha="right" if len(labels) > 3 else "center")
    ax.grid(axis="x", visible=False)


def _flops_panel(ax, title: str, labels: Sequence[str], pairs: Sequence[tuple[float | None, float | None]],
                 names_colors: tuple[tuple[str, str], tuple[str, str]]) -> None:
    """Two FLOPs counts per label as grouped bars, in one engineering unit."""
    scale, unit = engineering(max([v for pair in pairs for v in pair if v] or [1.0]))
    ax.set_title(title)
    _grouped_bars(ax, labels, [(name, [pair[i] / scale if pair[i] else None for pair in pairs], color)
                               for i, (name, color) in enumerate(names_colors)])
    ax.set_ylabel(f"FLOPs {unit}".strip())
    ax.legend(loc="upper left", ncol=2)


@_styled
def flops(stages: Sequence[str], inference: Sequence[tuple[float | None, float | None]],
          training: Sequence[tuple[float | None, float | None]], path: Path, *, title: str = "FLOPs per stage") -> Path:
    """Left: inference FLOPs per image, dense vs sparse (of the weights each stage ended with).
    Right: training FLOPs, paper-compatible vs corrected count; a last bar sums the stages."""
    fig, (left, right) = _figure(10.0, 4.0, ncols=2)
    _flops_panel(left, "inference (per image)", stages, inference,
                 (("dense", COLORS["val_sa"]), ("sparse", COLORS["a"])))
    labels = list(stages)
    rows = list(training)
    if len([r for r in rows if r[0] is not None]) > 1:
        labels.append("all stages")
        rows.append((sum(r[0] or 0 for r in rows), sum(r[1] or 0 for r in rows)))
    _flops_panel(right, "training (whole stage)", labels, rows,
                 (("paper-compatible", COLORS["test_sa"]), ("corrected", COLORS["b"])))
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


@_styled
def latency(providers: Mapping[str, Mapping], path: Path, *, title: str = "onnxruntime latency and throughput") -> Path:
    """`providers`: name -> runtime_check result with per_batch {batch: {median_ms, p90_ms, throughput_img_s}}.
    Left: batch-1 median and p90 latency per provider. Right: throughput per provider and batch size."""
    fig, (left, right) = _figure(10.0, 3.8, ncols=2)
    names = list(providers)
    b1 = [providers[p]["per_batch"].get("1", {}) for p in names]
    _grouped_bars(left, names, [("median", [r.get("median_ms") for r in b1], COLORS["a"]),
                                ("p90", [r.get("p90_ms") for r in b1], COLORS["val_sa"])], value_fmt="{:.3g}")
    left.set_ylabel("latency at batch 1 (ms)")
    left.set_title("latency, batch 1")
    left.legend(loc="upper left", ncol=2)
    batches = sorted({int(b) for p in names for b in providers[p]["per_batch"]})
    palette = [COLORS[k] for k in ("val_sa", "a", "b", "c", "d")]
    series = [(f"batch {b}", [providers[p]["per_batch"].get(str(b), {}).get("throughput_img_s") for p in names],
               palette[i % len(palette)]) for i, b in enumerate(batches)]
    peak = max([v for _, vals, _ in series for v in vals if v] or [1.0])
    scale, unit = engineering(peak)
    series = [(n, [v / scale if v else None for v in vals], c) for n, vals, c in series]
    _grouped_bars(right, names, series)
    right.set_ylabel(f"throughput (images/s{', ' + unit if unit else ''})")
    right.set_title("throughput")
    right.legend(loc="upper left", ncol=2)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


@_styled
def corruption(per: Mapping[str, Sequence[float]], path: Path, *, title: str, clean_acc: float | None = None,
               mean_acc: float | None = None, severities: Sequence[int] | None = None) -> Path:
    """Accuracy per corruption type (mean over its severities as a bar, each severity as a dot), with the
    clean accuracy and the unweighted mean over all corruptions as lines."""
    names = list(per)
    fig, (ax,) = _figure(max(8.5, 0.45 * len(names) + 4.0), 4.2)
    means = [sum(v) / len(v) if len(v) else 0.0 for v in per.values()]
    ax.bar(range(len(names)), means, color=COLORS["val_sa"], width=0.7, label="mean over severities")
    width = max((len(v) for v in per.values()), default=1)
    sev = list(severities) if severities and len(severities) == width else list(range(1, width + 1))
    for i, values in enumerate(per.values()):
        for s, v in enumerate(values):
            offset = (s - (width - 1) / 2) * (0.5 / max(width, 1))
            ax.plot(i + offset, v, "o", ms=3, color=COLORS["a"], alpha=0.4 + 0.6 * s / max(width - 1, 1),
                    label=f"severity {sev[0]} → {sev[-1]} (left to right)" if i == 0 and s == 0 else None)
    if clean_acc is not None:
        ax.axhline(clean_acc, color=COLORS["best"], lw=1.4, label=f"clean {clean_acc:.1f}")
    if mean_acc is not None:
        ax.axhline(mean_acc, color=COLORS["b"], ls="--", lw=1.4, label=f"mean corruption {mean_acc:.1f}")
    ax.set_xticks(range(len(names)), labels=[n.replace("_", " ") for n in names], rotation=40, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(axis="x", visible=False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    return _save(fig, path)


@_styled
def security_curves(curves: Mapping[str, Mapping[str, Sequence[float | None]]], path: Path, *, title: str,
                    n_text: str | None = None) -> Path:
    """Robust accuracy against eps, one line per run on one axis: `curves` label -> {"eps": [...],
    "pgd": [...], optional "autoattack": [...]} (eps in [0, 1], drawn in units of 1/255; AutoAttack dashed)."""
    fig, (ax,) = _figure(8.5, 4.4)
    palette = [COLORS[k] for k in ("a", "b", "c", "d", "train", "test_sa", "val_sa")]
    ticks: set[float] = set()
    for i, (label, c) in enumerate(curves.items()):
        color = palette[i % len(palette)]
        xs = [e * 255 for e in c["eps"]]
        ticks.update(xs)
        pts = [(x, v) for x, v in zip(xs, c["pgd"]) if num(v) is not None]
        if pts:
            ax.plot(*zip(*pts), "-", marker="o", ms=4, lw=1.6, color=color, label=f"{label} ({c.get('attack', 'PGD')})")
        aa = [(x, v) for x, v in zip(xs, c.get("autoattack") or []) if num(v) is not None]
        if aa:
            ax.plot(*zip(*aa), "--", marker="s", ms=3.5, lw=1.4, color=color, label=f"{label} (AutoAttack)")
    if ticks:
        ax.set_xticks(sorted(ticks), labels=[f"{t:g}" for t in sorted(ticks)])
    ax.set_xlabel("eps (×1/255, L∞)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title + (f"\n{n_text}" if n_text else ""))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    return _save(fig, path)
