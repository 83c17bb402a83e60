"""runtime_check: onnxruntime latency/throughput of every exported variant next to the dense baseline.

The baseline is the same architecture at the same input size without any compression: the run's
dense stage (dense_warmup) exported fresh when there is one, otherwise the registered architecture
built with the run seed (timing does not depend on weight values). Per variant and provider the stage
records batch-1 median/p90, throughput at the largest batch, file size, session peak RSS, and
speedup = dense time / variant time beside macs_cut = dense MACs / variant MACs. Budgets fail the stage.
"""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, PositiveInt

from exports.runtime_record import RuntimeRecord
from pipeline.engine.rundir import StageRecord
from pipeline.engine.errors import CheckpointError, ConfigError, PipelineError, StageFailed
from pipeline.engine.stage import Stage, StageConfig

# The implementation (torch, onnx) is imported where it runs: `validate` and `stages` import this module for its Config.

DENSE_FILE = "dense.onnx"


class RuntimeCheckConfig(StageConfig):
    providers: list[Literal["cpu", "cuda"]] = Field(default_factory=lambda: ["cpu", "cuda"],
                                                    description="execution providers to time; CPU is always timed")
    on_missing: Literal["skip", "error"] = Field(default="skip", description="a requested provider that is not installed: skip it or fail")
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 64], min_length=1,
                                           description="batch 1 for latency, the largest one for throughput")
    runs: int = Field(default=100, ge=100, description="timed runs per batch size and model")
    rounds: int = Field(default=5, ge=1, description="runs are split into this many rounds alternating between models")
    warmup: int = Field(default=20, ge=1)
    intra_op_threads: int | None = Field(default=None, gt=0, description="CPU threads per op (default: all cores); fixed and recorded")
    clock: Literal["wall", "cpu"] = Field(
        default="wall", description="wall time, or the timing thread's CPU time (CPU provider, intra_op_threads: 1; "
                                    "robust on a shared machine)")
    onnx_file: str = Field(default="model.onnx", description="file of the input stage whose figures fill `providers`")
    dense_from: str | None = Field(default=None, description="stage whose model is the dense baseline, or 'fresh' "
                                                             "(default: the run's dense_warmup stage, else fresh)")
    budget_variant: str | None = Field(default=None, description="variant the budgets apply to (default: structured "
                                                                 "when exported, else the first)")
    max_latency_ms: float | None = Field(default=None, gt=0, description="budget: CPU batch-1 median latency")
    min_speedup: float | None = Field(default=None, gt=0, description="budget: CPU speedup over dense at the largest batch")
    max_file_mb: float | None = Field(default=None, gt=0, description="budget: ONNX file size in MB (10^6 bytes)")


class RuntimeCheck(Stage):
    Config = RuntimeCheckConfig
    summary = "onnxruntime latency/throughput/size/RSS of each export variant against the dense baseline; budgets"

    def run(self, ctx) -> None:
        from exports.onnx_export import graph_stats
        from exports.ort_runtime import ProviderMissing, available_providers
        from exports.runtime_compare import compare_models

        cfg: RuntimeCheckConfig = ctx.config
        card = ctx.input.model_holder().card
        shape = (card["in_chans"], *card["input_size"])
        threads = cfg.intra_op_threads or os.cpu_count() or 1
        if cfg.clock == "cpu" and threads != 1:
            raise ConfigError(f"stages.{ctx.name}.clock: 'cpu' needs intra_op_threads: 1 (got {threads})")
        models = self._variants(ctx, cfg)
        dense_path, source = self._dense_baseline(ctx, cfg, card, shape)
        files = {"dense": dense_path, **{name: path for name, (path, _) in models.items()}}
        stats = {"dense": graph_stats(dense_path), **{name: st for name, (_, st) in models.items()}}
        present = available_providers()
        wanted = ["cpu"] + [p for p in cfg.providers if p != "cpu"]
        timed: dict[str, dict] = {}
        for prov in wanted:
            try:
                if prov not in present:
                    raise ProviderMissing(f"provider {prov!r} is not available in this onnxruntime build "
                                          f"(available: {', '.join(present)})")
                timed[prov] = compare_models(files, prov, input_shape=shape, batch_sizes=cfg.batch_sizes,
                                             warmup=cfg.warmup, runs=cfg.runs, rounds=cfg.rounds,
                                             intra_op_threads=threads, seed=ctx.seed,
                                             clock=cfg.clock if prov == "cpu" else "wall")
            except ProviderMissing as exc:  # absent, or listed but unable to start (e.g. no CUDA libraries)
                if cfg.on_missing == "error" or prov == "cpu":
                    raise PipelineError(f"runtime_check: {exc}; set on_missing: skip to time the others") from None
                ctx.log(f"[{ctx.name}] skip {prov}: {exc}")
                timed[prov] = {"status": "skipped", "reason": str(exc)}
        big = str(max(cfg.batch_sizes))
        rows = []
        for prov, res in timed.items():
            if "status" in res:
                continue
            dense = res["dense"]["per_batch"]
            for name in files:
                per = res[name]["per_batch"]
                row = {"variant": name, "provider": prov, "file": str(files[name].relative_to(ctx.run_dir)),
                       "bytes": stats[name]["bytes"], "params": stats[name]["params"],
                       "nonzero_params": stats[name]["nonzero_params"], "macs": stats[name]["macs"],
                       "macs_cut": stats["dense"]["macs"] / max(stats[name]["macs"], 1),
                       "size_ratio": stats["dense"]["bytes"] / stats[name]["bytes"],
                       "b1_median_ms": per.get("1", {}).get("median_ms"), "b1_p90_ms": per.get("1", {}).get("p90_ms"),
                       "throughput_batch": int(big), "throughput_img_s": per[big]["throughput_img_s"],
                       "peak_rss_mb": res[name]["peak_rss_mb"],
                       "speedup": {b: dense[b]["median_ms"] / per[b]["median_ms"] for b in per}}
                rows.append(row)
                ctx.log(f"[{ctx.name}] {prov} {name:<20} {row['bytes'] / 1e6:8.3f} MB  MACs {row['macs']:>12,}  "
                        + "  ".join(f"b{b} {per[b]['median_ms']:.3f} ms" for b in per)
                        + f"  speedup(b{big}) {row['speedup'][big]:.2f}x  macs_cut {row['macs_cut']:.2f}x")
        primary = next((n for n, (p, _) in models.items() if p.name == cfg.onnx_file), next(iter(models)))
        providers = {prov: (res if "status" in res else
                            {"status": "ok", "per_batch": res[primary]["per_batch"],
                             "environment": _environment(prov, threads, cfg.clock if prov == "cpu" else "wall")}) for prov, res in timed.items()}
        runtime = RuntimeRecord(
            model=str(files[primary].relative_to(ctx.run_dir)), input_shape=list(shape), intra_op_threads=threads,
            providers=providers,
            comparison={"baseline": {"source": source, "file": str(dense_path.relative_to(ctx.run_dir))},
                        "throughput_batch": int(big), "rows": rows, "clock": cfg.clock,
                        "note": "speedup = dense median time / variant median time at the same batch; "
                                "macs_cut = dense MACs / variant MACs (from the ONNX graphs)"}).to_json()
        ctx.write_json("runtime.json", runtime)
        ctx.record[RuntimeRecord.SECTION] = runtime
        cpu1 = providers["cpu"]["per_batch"].get("1")
        if cpu1:
            ctx.metrics.update({"cpu_b1_median_ms": cpu1["median_ms"], "cpu_b1_p90_ms": cpu1["p90_ms"]})
        judged = self._budget_row(cfg, rows, models)
        if judged is not None:
            ctx.metrics.update({"variant": judged["variant"], "speedup": judged["speedup"][big],
                                "macs_cut": judged["macs_cut"], "size_ratio": judged["size_ratio"],
                                "variant_bytes": judged["bytes"], "dense_bytes": stats["dense"]["bytes"]})
            self._check_budgets(cfg, judged, big)
        ctx.pass_model_through()

    @staticmethod
    def _variants(ctx, cfg) -> dict:
        """name -> (path, graph stats) of each kept ONNX file of the export stage upstream."""
        from exports.onnx_export import graph_stats

        recorded = ctx.input.data.get("variants")
        if not recorded:  # an export of older runs, or a stage that wrote only one file
            path = ctx.input.file(cfg.onnx_file)
            return {"masked": (path, graph_stats(path))}
        out = {}
        for name, v in recorded.items():
            if v.get("kept", True) and v.get("file"):
                path = ctx.input.file(v["file"])
                out[name] = (path, {k: v[k] for k in ("bytes", "params", "nonzero_params", "macs")})
        return out

    @staticmethod
    def _dense_baseline(ctx, cfg, card, shape):
        import torch

        from exports.onnx_export import export_onnx
        from pipeline.models.card import build_model

        path = ctx.dir / DENSE_FILE
        model, source = None, None
        if cfg.dense_from == "fresh":
            names = []
        elif cfg.dense_from:
            names = [cfg.dense_from]
        else:
            names = [s.name for s in ctx.pipeline_config.stages if s.type == "dense_warmup" and s.name != ctx.name]
        for name in names:
            try:
                handle = StageRecord.finished_stage(ctx.run_dir, name).model_holder()
            except CheckpointError:
                if cfg.dense_from:
                    raise
                continue
            other = handle.card or {}
            fits = all(other.get(k) == card[k] for k in ("arch", "num_classes", "in_chans", "input_size"))
            if fits and not handle.has_file("structure.json"):
                model, _, _ = handle.load_model("cpu")
                source = f"stage {handle.name!r} (dense weights)"
                break
            if cfg.dense_from:
                raise StageFailed(f"runtime_check: dense_from {cfg.dense_from!r} holds no dense {card['arch']} of "
                                  f"input {card['input_size']} (channel-pruned, or another architecture); "
                                  "name a dense stage or use dense_from: fresh")
        if model is None:
            torch.manual_seed(ctx.seed)
            model = build_model(card)
            source = f"fresh {card['arch']} of the same shapes (timing does not depend on weight values)"
        export_onnx(model.eval(), path, input_shape=tuple(shape), metadata={"variant": "dense_baseline", **{
            k: card[k] for k in ("arch", "class_names")}})
        ctx.register_file(DENSE_FILE)
        ctx.log(f"[{ctx.name}] dense baseline: {source}")
        return path, source

    @staticmethod
    def _budget_row(cfg, rows, models):
        cpu = {r["variant"]: r for r in rows if r["provider"] == "cpu"}
        name = cfg.budget_variant or ("structured" if "structured" in models else next(iter(models)))
        if name not in cpu:
            raise StageFailed(f"runtime_check: budget_variant {name!r} was not exported (variants: {', '.join(models)})")
        return cpu[name]

    @staticmethod
    def _check_budgets(cfg, row, big: str) -> None:
        failed = []
        if cfg.max_latency_ms is not None and row["b1_median_ms"] is not None and row["b1_median_ms"] > cfg.max_latency_ms:
            failed.append(f"max_latency_ms={cfg.max_latency_ms:g}: measured batch-1 median {row['b1_median_ms']:.3f} ms")
        if cfg.min_speedup is not None and row["speedup"][big] < cfg.min_speedup:
            failed.append(f"min_speedup={cfg.min_speedup:g}: measured {row['speedup'][big]:.3f}x over dense at batch {big}")
        if cfg.max_file_mb is not None and row["bytes"] / 1e6 > cfg.max_file_mb:
            failed.append(f"max_file_mb={cfg.max_file_mb:g}: file {row['file']} is {row['bytes'] / 1e6:.3f} MB")
        if failed:
            raise StageFailed(f"runtime_check: variant {row['variant']!r} (cpu) misses its budget: " + "; ".join(failed))


def _environment(provider: str, threads: int, clock: str) -> dict:
    from exports.ort_runtime import cpu_model

    import platform

    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "provider": provider, "intra_op_threads": threads, "clock": clock,
            "inter_op_threads": 1, "graph_optimization": "all", "execution_mode": "sequential",
            "cpu": cpu_model(), "platform": platform.platform(), "python": platform.python_version(),
            "timing": "alternating rounds across models (exports.runtime_compare)"}
