"""Report sections on cost: FLOPs per stage (FlopsRecord) and onnxruntime latency (RuntimeRecord)."""
from __future__ import annotations

from exports.runtime_record import RuntimeRecord
from pipeline.metrics.flops import FlopsRecord
from pipeline.reporting import plots
from pipeline.reporting.format import flops_text, fmt, md_table


def flops(rep) -> None:
    stages = [(st, st.section(FlopsRecord)) for st in rep.run.finished() if st.section("flops") is not None]
    if not stages:
        return
    names, inference, training, rows = [], [], [], []
    for st, rec in stages:
        inf, tr = rec.inference, rec.training
        dense, sparse = (inf.dense_flops, inf.sparse_flops) if inf else (None, None)
        paper, corrected = (tr.paper, tr.corrected) if tr else (None, None)
        names.append(st.name)
        inference.append((dense, sparse))
        training.append((paper, corrected))
        rows.append([f"`{st.name}`", flops_text(dense), flops_text(sparse), fmt(inf.ratio if inf else None, 3),
                     flops_text(paper), flops_text(corrected), fmt(tr.images if tr else None)])
    path = plots.flops(names, inference, training, rep.plot_path("flops"))
    rep.add(md_table(["stage", "inference dense (per image)", "inference sparse", "ratio", "training (paper)",
                      "training (corrected)", "images seen"], rows, ["l", "r", "r", "r", "r", "r", "r"]))
    rep.add(f"Convention: {stages[0][1].convention}.")
    rep.image(path, "FLOPs per stage")


def latency(rep) -> None:
    for st in rep.run.finished():
        runtime = st.section(RuntimeRecord)
        if runtime is None or not runtime.providers:
            continue
        rows = []
        for prov, res in runtime.providers.items():
            if res.get("status") != "ok":
                rows.append([prov, res.get("status", "?"), "", "", "", "", res.get("reason", "")])
                continue
            for b, r in sorted(res.get("per_batch", {}).items(), key=lambda kv: int(kv[0])):
                rows.append([prov, "ok", b, fmt(r.get("median_ms"), 3), fmt(r.get("p90_ms"), 3),
                             fmt(r.get("p99_ms"), 3), fmt(r.get("throughput_img_s"), 0)])
        rep.add(f"### `{st.name}`: `{runtime.model}`")
        rep.add(md_table(["provider", "status", "batch", "median (ms)", "p90 (ms)", "p99 (ms)", "images/s"], rows,
                         ["l", "l", "r", "r", "r", "r", "r"]))
        ok = runtime.ok()
        envs = [f"{p}: {res['environment'].get('cpu', '')}, {res['environment'].get('intra_op_threads', '?')} "
                f"intra-op threads, onnxruntime {res['environment'].get('onnxruntime', '?')}"
                for p, res in ok.items() if isinstance(res.get("environment"), dict)]
        if envs:
            rep.add("Measured on " + "; ".join(envs) + ".")
        if ok:
            rep.image(plots.latency(ok, rep.plot_path(f"{st.name}_latency"),
                                    title=f"{st.name}: onnxruntime latency and throughput"), f"{st.name} latency")
