"""runtime_check: onnxruntime latency and throughput of the exported model on each requested provider."""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from pydantic import PositiveInt

from exports.ort_runtime import ProviderMissing, available_providers, benchmark
from exports.runtime_record import RuntimeRecord
from pipeline.engine.errors import PipelineError
from pipeline.engine.stage import Stage, StageConfig


class RuntimeCheckConfig(StageConfig):
    providers: list[Literal["cpu", "cuda"]] = Field(default_factory=lambda: ["cpu", "cuda"],
                                                    description="execution providers to time; CPU is always timed")
    on_missing: Literal["skip", "error"] = Field(default="skip", description="a requested provider that is not installed: skip it or fail")
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 64], min_length=1, description="batch 1 for latency, a larger one for throughput")
    runs: int = Field(default=100, ge=100, description="timed runs per batch size")
    warmup: int = Field(default=20, ge=1)
    intra_op_threads: int | None = Field(default=None, gt=0, description="CPU threads per op (default: all cores); fixed and recorded")
    onnx_file: str = Field(default="model.onnx", description="file of the input stage to time")


class RuntimeCheck(Stage):
    Config = RuntimeCheckConfig
    summary = "onnxruntime median/p90 latency (batch 1) and throughput per provider; results in runtime.json"

    def run(self, ctx) -> None:
        cfg: RuntimeCheckConfig = ctx.config
        onnx_path = ctx.input.file(cfg.onnx_file)
        card = ctx.input.model_holder().card
        shape = (card["in_chans"], *card["input_size"])
        threads = cfg.intra_op_threads or os.cpu_count() or 1
        present = available_providers()
        wanted = ["cpu"] + [p for p in cfg.providers if p != "cpu"]
        results: dict = {}
        for prov in wanted:
            try:
                if prov not in present:
                    raise ProviderMissing(f"provider {prov!r} is not available in this onnxruntime build "
                                          f"(available: {', '.join(present)})")
                res = benchmark(onnx_path, prov, batch_sizes=tuple(cfg.batch_sizes), warmup=cfg.warmup,
                                runs=cfg.runs, intra_op_threads=threads, input_shape=shape)
            except ProviderMissing as exc:  # absent, or listed but unable to start (e.g. no CUDA libraries)
                if cfg.on_missing == "error" or prov == "cpu":
                    raise PipelineError(f"runtime_check: {exc}; set on_missing: skip to time the others") from None
                ctx.log(f"[{ctx.name}] skip {prov}: {exc}")
                results[prov] = {"status": "skipped", "reason": str(exc)}
                continue
            res["status"] = "ok"
            results[prov] = res
            for b, r in res["per_batch"].items():
                ctx.log(f"[{ctx.name}] {prov} batch {b}: median {r['median_ms']:.3f} ms, p90 {r['p90_ms']:.3f} ms, "
                        f"{r['throughput_img_s']:.0f} img/s")
        runtime = RuntimeRecord(model=str(onnx_path.relative_to(ctx.run_dir)), input_shape=list(shape),
                                intra_op_threads=threads, providers=results).to_json()
        ctx.write_json("runtime.json", runtime)
        ctx.record[RuntimeRecord.SECTION] = runtime
        cpu1 = results["cpu"]["per_batch"].get("1") if results["cpu"].get("status") == "ok" else None
        if cpu1:
            ctx.metrics.update({"cpu_b1_median_ms": cpu1["median_ms"], "cpu_b1_p90_ms": cpu1["p90_ms"]})
        ctx.pass_model_through()
