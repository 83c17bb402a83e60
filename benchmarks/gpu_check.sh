#!/usr/bin/env bash
# GPU check, one script, < 8 minutes on one H100/H200. Prints:
#   1. PGD-10 training step speedup, ours (bf16 autocast + channels_last) vs the papers' fp32 loop:
#      benchmarks/pgd_step.py --device cuda
#   2. onnxruntime CUDA execution provider (IOBinding, inputs/outputs on the device) latency and
#      throughput of dense vs channel-pruned (structured, 4x fewer MACs) PreActResNet-18 exports
#   3. a short CUDA smoke run of the quickstart (pipeline.yaml, epochs cut down) ending in the
#      structured export and the runtime comparison against the dense baseline
#
# Needs, beyond the CPU set-up (make setup):
#   - a CUDA build of torch (the pinned torch wheel from the CUDA index, e.g. cu130),
#   - onnxruntime-gpu instead of onnxruntime (same version as constraints.txt; the two must not both be
#     installed: pip uninstall -y onnxruntime && pip install onnxruntime-gpu==<version>).
#   Offline: on a machine with network, `pip download -d wheels/ onnxruntime-gpu==<version>
#   nvidia-cudnn-cu12 nvidia-cublas-cu12 nvidia-cuda-runtime-cu12 nvidia-cufft-cu12 nvidia-curand-cu12`
#   (and the torch CUDA wheel), copy wheels/ over, then
#   `.venv/bin/pip install --no-index --find-links wheels/ onnxruntime-gpu==<version> ...`.
# Usage: bash benchmarks/gpu_check.sh [PYTHON]   (default .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="$(mktemp -d /tmp/gpu_check.XXXXXX)"
echo "== environment"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'PY'
import onnxruntime as ort, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("onnxruntime", ort.__version__, ort.get_available_providers())
PY

echo "== 1. PGD-10 step: ours (bf16 + channels_last) vs reference (fp32)"
timeout 180 "$PY" benchmarks/pgd_step.py --device cuda --precision bf16 --channels-last --repeats 10 --warmup 3 \
  || echo "pgd_step.py failed or timed out (exit $?)"

echo "== 2. onnxruntime CUDA EP (IOBinding): dense vs structured PreActResNet-18, 32x32"
timeout 180 "$PY" - "$OUT" <<'PY' || echo "onnxruntime CUDA comparison failed or timed out (exit $?)"
import sys
from pathlib import Path
import torch
from exports.onnx_export import export_onnx, graph_stats
from exports.runtime_compare import compare_models
from pipeline.metrics.flops import count_macs
from pipeline.models import create_model
from pipeline.models.channel_plan import plan_groups, prune_to_target
from pipeline.models.structure import dependency_graph

out, shape = Path(sys.argv[1]), (3, 32, 32)
paths = {}
for name, cut in (("dense", 1), ("structured_4x", 4)):
    torch.manual_seed(0)
    m = create_model("preact_resnet18", num_classes=10, in_chans=3).eval()
    if cut > 1:
        g = dependency_graph(m, shape)
        dense = sum(l.macs for l in count_macs(m, shape))
        prune_to_target(m, g, shape, target_macs=dense // cut, scope="per_layer", original_sizes={x.name: x.size for x in plan_groups(m, g)}, round_to=8)
    paths[name] = export_onnx(m, out / f"{name}.onnx", input_shape=shape, metadata={"variant": name})
res = compare_models(paths, "cuda", input_shape=shape, batch_sizes=(1, 256), warmup=20, runs=200, rounds=5)
dense = res["dense"]["per_batch"]
for name, r in res.items():
    st = graph_stats(paths[name])
    cells = "  ".join(f"b{b} median {v['median_ms']:.3f} ms p90 {v['p90_ms']:.3f} ms ({dense[b]['median_ms'] / v['median_ms']:.2f}x)"
                      for b, v in r["per_batch"].items())
    print(f"{name:<14} {st['bytes'] / 1e6:6.2f} MB  {st['macs'] / 1e6:7.1f} MMACs  {cells}")
PY

echo "== 3. CUDA smoke run of pipeline.yaml (short epochs)"
timeout 240 "$PY" -m pipeline run pipeline.yaml --run-dir "$OUT/quickstart" --device cuda \
  --set stages.warmup.epochs=2 --set stages.early_bird.epochs=3 --set stages.finetune.epochs=1 \
  || echo "quickstart smoke run failed or timed out (exit $?)"
echo "== done; files in $OUT"
