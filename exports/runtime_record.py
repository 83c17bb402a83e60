"""stage.json `runtime` (and runtime.json) of a runtime_check stage: per onnxruntime provider, either
the benchmark's result (status ok, per-batch latency and throughput, environment) or why it was
skipped, and the comparison of every variant with the dense baseline. Read by the report, `compare` and the CLI's end-of-run summary."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pipeline.engine.section import Section


@dataclass
class RuntimeRecord(Section):
    SECTION: ClassVar[str] = "runtime"

    model: str  # the ONNX file, relative to the run directory
    input_shape: list[int]
    intra_op_threads: int
    providers: dict[str, dict]  # provider -> ort_runtime.benchmark() result + status, or {status, reason}
    # every exported variant against the dense baseline (exports.runtime_compare): rows of size, MACs,
    # latency, speedup and macs_cut per provider
    comparison: dict | None = None

    def ok(self) -> dict[str, dict]:
        return {p: r for p, r in self.providers.items() if r.get("status") == "ok"}

    def batch(self, provider: str, batch_size: int = 1) -> dict | None:
        """One provider's figures at one batch size (None when it was skipped or not timed at that size)."""
        return (self.ok().get(provider) or {}).get("per_batch", {}).get(str(batch_size))
