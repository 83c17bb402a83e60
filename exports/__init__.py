"""After training: ONNX export and parity checks (onnx_export, verify), onnxruntime sessions and
latency benchmarks (ort_runtime), and the image predictor behind `pipeline predict` (predict).

Import the submodules directly; this package imports nothing itself so the CLI stays fast to start.
"""
