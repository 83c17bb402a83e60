"""Report section: what compression bought where the model is deployed, measured against the dense baseline.

Reads the `comparison` block of each runtime_check stage (runtime.json, also in stage.json): per variant
and provider the file size, parameters, MACs from the ONNX graph, batch-1 latency, throughput, session
peak RSS, and speedup beside macs_cut.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.reporting import plots

EXPLAIN = ("Unstructured zeros buy no latency in onnxruntime: its convolution and GEMM kernels are dense, so "
           "zeros inside full-size weights (an unstructured ticket's `masked` export, or `sparse_initializers`, "
           "which onnxruntime densifies when the session loads) cost as much as any other weight; they shrink "
           "the download at most. Only removing channels (`channel_prune`, and the lossless `structured` shrink "
           "of channels that are entirely zero) makes the convolutions smaller, so only that lowers latency, "
           "roughly in proportion to the MACs cut.")


def _f(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def deployment_section(rep) -> None:
    """Add the dense-vs-variants table, the plain-words conclusion and a plot for every runtime_check stage."""
    for st in rep.run.finished():
        runtime = st.section("runtime")
        comp = runtime.get("comparison") if isinstance(runtime, dict) else None
        if not comp or not comp.get("rows"):
            continue
        big = str(comp["throughput_batch"])
        rows = []
        for r in comp["rows"]:
            rows.append([f"`{r['variant']}`", r["provider"], _f(r["bytes"] / 1e6, 3), f"{r['params']:,}",
                         _f(r["macs"] / 1e6, 3), _f(r["macs_cut"]), _f(r.get("b1_median_ms"), 3),
                         _f(r.get("b1_p90_ms"), 3), _f(r["throughput_img_s"], 0), _f(r["speedup"].get("1")),
                         _f(r["speedup"][big]), _f(r.get("peak_rss_mb"), 1)])
        rep.add(f"### `{st.name}`: dense baseline = {comp['baseline']['source']}")
        rep.add(_table(["variant", "provider", "file (MB)", "params", "MACs (M)", "macs_cut", "b1 median (ms)",
                        "b1 p90 (ms)", f"images/s (b{big})", "speedup b1", f"speedup b{big}", "peak RSS (MB)"], rows))
        rep.add(EXPLAIN + " " + _measured(comp, big))
        rep.image(_plot(comp, big, rep.plot_path(f"{st.name}_deployment"), st.name), f"{st.name} deployment")


def _measured(comp: dict, big: str) -> str:
    cpu = {r["variant"]: r for r in comp["rows"] if r["provider"] == "cpu"}
    parts = []
    for name in ("masked", "structured", "sparse_initializers"):
        if name in cpu:
            r = cpu[name]
            parts.append(f"`{name}` {r['speedup'][big]:.2f}x faster at batch {big} for {r['macs_cut']:.2f}x fewer MACs, "
                         f"{r['size_ratio']:.2f}x smaller file")
    return ("Measured here (CPU, against dense): " + "; ".join(parts) + ".") if parts else ""


@plots._styled
def _plot(comp: dict, big: str, path: Path, name: str) -> Path:
    cpu = [r for r in comp["rows"] if r["provider"] == "cpu"]
    labels = [r["variant"] for r in cpu]
    fig, (left, right) = plots._figure(10.0, 3.8, ncols=2)
    plots._grouped_bars(left, labels, [("speedup b1", [r["speedup"].get("1") for r in cpu], plots.COLORS["a"]),
                                       (f"speedup b{big}", [r["speedup"][big] for r in cpu], plots.COLORS["c"]),
                                       ("macs_cut", [r["macs_cut"] for r in cpu], plots.COLORS["b"])],
                        value_fmt="{:.2f}")
    left.axhline(1.0, color="#555555", linewidth=0.8)
    left.set_ylabel("x dense")
    left.set_title("speedup next to MACs cut (CPU)")
    left.legend(loc="upper left", ncol=3)
    plots._grouped_bars(right, labels, [("file (MB)", [r["bytes"] / 1e6 for r in cpu], plots.COLORS["d"])])
    right.set_ylabel("ONNX file (MB)")
    right.set_title("file size")
    fig.suptitle(f"{name}: compressed variants against the dense baseline", fontsize=11)
    return plots._save(fig, path)
