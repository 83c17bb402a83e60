"""exports/: ONNX export + metadata, parity, sparse initializers, onnxruntime sessions and timing, predictor.

Every test runs real onnxruntime CPU sessions on a tiny conv+BN+linear model defined here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from PIL import Image
from torch import nn

from exports import ort_runtime
from exports.onnx_export import export_onnx, read_metadata, to_sparse_initializers
from exports.ort_runtime import ProviderMissing, available_providers, benchmark, make_session
from exports.predict import Predictor, load_image
from exports.verify import ParityError, assert_parity, check_parity
from pipeline.engine.errors import DataError, StageFailed

SHAPE = (3, 8, 8)
CLASSES = ["cat", "dog", "ship", "frog"]


class TinyNet(nn.Module):
    """normalise -> conv -> BN -> ReLU -> 2x2 pool -> linear, with pixel inputs in [0, 1]."""

    def __init__(self, num_classes: int = 4, pool: int = 2):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.fc = nn.Linear(8 * pool * pool, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv((x - self.mean) / self.std)))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_model(seed: int = 0, **kwargs) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet(**kwargs)
    with torch.no_grad():  # BN statistics that are not the identity, so the fold into conv matters
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.2, 0.2)
    return model


def prune_(model: nn.Module, sparsity: float, seed: int = 0) -> None:
    """Zero the smallest-magnitude fraction of each conv/linear weight in place."""
    with torch.no_grad():
        for m in (model.conv, model.fc):
            w = m.weight
            k = int(round(sparsity * w.numel()))
            idx = w.abs().flatten().argsort()[:k]
            w.view(-1)[idx] = 0.0


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = make_session(path, "cpu", intra_op_threads=1)
    return session.run(None, {"input": x.astype(np.float32)})[0]


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x.astype(np.float32))).numpy()


METADATA = {"class_names": CLASSES, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26],
            "sparsity": 0.5, "sa": 0.8125, "ra": 0.4375, "arch": "tiny", "note": "123"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[TinyNet, Path]:
    model = make_model()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", input_shape=SHAPE,
                       metadata=METADATA)
    return model, path


def real_inputs(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


# --- export ------------------------------------------------------------------------------------

def test_export_writes_checked_model_with_names_opset_and_metadata(exported):
    _, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    meta = read_metadata(path)
    assert meta == {**METADATA, "input_shape": [3, 8, 8]}
    assert meta["note"] == "123"  # a str that looks like JSON stays a str


def test_export_leaves_caller_model_untouched(tmp_path):
    model = make_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "m.onnx", input_shape=SHAPE, metadata={})
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_dynamic_batch_matches_torch_for_batch_1_and_5(exported):
    model, path = exported
    for n in (1, 5):
        x = real_inputs(n).numpy()
        got = ort_logits(path, x)
        assert got.shape == (n, len(CLASSES))
        np.testing.assert_allclose(got, torch_logits(model, x), atol=1e-5)


def test_opset_below_17_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export_onnx(make_model(), tmp_path / "m.onnx", input_shape=SHAPE, metadata={}, opset=16)
    assert not list(tmp_path.iterdir())


def test_failed_export_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    export_onnx(make_model(seed=0), target, input_shape=SHAPE, metadata={"arch": "old"})
    old_bytes = target.read_bytes()

    def broken_checker(*args, **kwargs):
        raise onnx.checker.ValidationError("injected failure")

    monkeypatch.setattr(onnx.checker, "check_model", broken_checker)
    with pytest.raises(onnx.checker.ValidationError, match="injected"):
        export_onnx(make_model(seed=1), target, input_shape=SHAPE, metadata={"arch": "new"})
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert target.read_bytes() == old_bytes
    with pytest.raises(onnx.checker.ValidationError):
        export_onnx(make_model(), tmp_path / "fresh.onnx", input_shape=SHAPE, metadata={})
    assert not (tmp_path / "fresh.onnx").exists()


# --- parity ------------------------------------------------------------------------------------

def test_parity_passes_on_real_inputs(exported):
    model, path = exported
    result = check_parity(path, model, real_inputs(21), batch_size=8)  # 8 + 8 + 5: a ragged last batch
    assert result["n"] == 21 and result["tol"] == 1e-4
    assert result["passed"] and 0.0 <= result["max_abs_diff"] <= 1e-4
    assert assert_parity(path, model, real_inputs(3))["passed"]


def test_parity_fails_on_tampered_model_with_measured_diff(exported, tmp_path):
    model, path = exported
    proto = onnx.load(str(path))
    bias = next(t for t in proto.graph.initializer if t.name == "fc.bias")
    values = numpy_helper.to_array(bias).copy()
    values[2] += 0.5  # shifts logit 2 by exactly 0.5 for every input
    bias.CopyFrom(numpy_helper.from_array(values, name="fc.bias"))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(proto, str(tampered))

    result = check_parity(tampered, model, real_inputs(6))
    assert not result["passed"]
    assert result["max_abs_diff"] == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(ParityError) as info:
        assert_parity(tampered, model, real_inputs(6))
    assert isinstance(info.value, StageFailed)
    assert f"{result['max_abs_diff']:.3g}" in str(info.value) and "0.5" in str(info.value)


# --- sparse initializers ----------------------------------------------------------------------

def test_sparse_initializers_keep_outputs_and_report_sizes(tmp_path):
    model = make_model(num_classes=10, pool=4)  # fc weight 10 x 128: big enough for sizes to show
    prune_(model, 0.9)
    dense = export_onnx(model, tmp_path / "dense.onnx", input_shape=SHAPE, metadata={"arch": "tiny"})
    report = to_sparse_initializers(dense, tmp_path / "sparse.onnx")

    fc = next(c for c in report["converted"] if c["name"] == "fc.weight")
    assert (fc["numel"], fc["nnz"]) == (1280, 128)
    assert fc["sparsity"] == pytest.approx(0.9)
    assert (fc["dense_bytes"], fc["sparse_bytes"]) == (1280 * 4, 128 * 12)  # INT64 index + fp32 value
    assert report["n_converted"] == 2  # the fc weight and the conv weight (BN folded in, zeros kept)
    assert report["src_bytes"] == dense.stat().st_size
    assert report["dst_bytes"] == (tmp_path / "sparse.onnx").stat().st_size
    assert report["smaller"] and report["dst_bytes"] < report["src_bytes"]

    sparse = onnx.load(str(tmp_path / "sparse.onnx"))
    assert {s.values.name for s in sparse.graph.sparse_initializer} >= {"fc.weight"}
    assert all(s.indices.data_type == onnx.TensorProto.INT64 for s in sparse.graph.sparse_initializer)
    assert read_metadata(tmp_path / "sparse.onnx")["arch"] == "tiny"
    x = real_inputs(4).numpy()
    np.testing.assert_array_equal(ort_logits(tmp_path / "sparse.onnx", x), ort_logits(dense, x))


def test_sparse_file_is_larger_below_two_thirds_sparsity(tmp_path):
    model = make_model(num_classes=10, pool=4)
    prune_(model, 0.3)
    dense = export_onnx(model, tmp_path / "dense.onnx", input_shape=SHAPE, metadata={})
    report = to_sparse_initializers(dense, tmp_path / "sparse.onnx")
    assert not report["smaller"] and report["dst_bytes"] > report["src_bytes"]
    skipped = to_sparse_initializers(dense, tmp_path / "none.onnx", min_sparsity=0.5)
    assert skipped["n_converted"] == 0 and not onnx.load(str(tmp_path / "none.onnx")).graph.sparse_initializer


# --- onnxruntime sessions and benchmark ---------------------------------------------------------

def test_benchmark_cpu_reports_all_fields(exported):
    _, path = exported
    result = benchmark(path, "cpu", batch_sizes=(1, 3), warmup=1, runs=5, intra_op_threads=1)
    assert result["runs"] == 5 and result["input_shape"] == [3, 8, 8]
    assert set(result["per_batch"]) == {"1", "3"}
    for batch, stats in ((1, result["per_batch"]["1"]), (3, result["per_batch"]["3"])):
        assert stats["runs"] == 5 and stats["batch_size"] == batch
        assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        assert stats["min_ms"] <= stats["mean_ms"] <= stats["max_ms"]
        assert stats["throughput_img_s"] == pytest.approx(batch * 1000.0 / stats["median_ms"])
    env = result["environment"]
    assert env["onnxruntime"] == ort.__version__ and env["provider"] == "cpu"
    assert env["intra_op_threads"] == 1 and env["inter_op_threads"] == 1
    assert env["session_providers"] == ["CPUExecutionProvider"] and env["cpu"]
    assert "gpu" not in env


def test_benchmark_rejects_zero_runs(exported):
    with pytest.raises(ValueError, match="runs must be >= 1"):
        benchmark(exported[1], "cpu", runs=0, intra_op_threads=1)


def test_session_options_are_explicit(exported):
    session = make_session(exported[1], "cpu", intra_op_threads=2, inter_op_threads=1, graph_optimization="basic")
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with pytest.raises(ValueError, match="graph_optimization"):
        make_session(exported[1], "cpu", intra_op_threads=1, graph_optimization="fast")


def test_provider_names_are_mapped(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider", "FancyExecutionProvider"])
    assert available_providers() == ["cuda", "cpu", "fancy"]
    providers = ort_runtime._provider_list("cuda", "HEURISTIC", 0)
    assert providers == [("CUDAExecutionProvider", {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC"}),
                         "CPUExecutionProvider"]
    assert ort_runtime._provider_list("cpu", "HEURISTIC", 0) == ["CPUExecutionProvider"]


def test_missing_or_unknown_provider_raises(exported, monkeypatch):
    with pytest.raises(ProviderMissing, match="unknown execution provider 'gpu'"):
        make_session(exported[1], "gpu", intra_op_threads=1)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert available_providers() == ["cpu"]
    with pytest.raises(ProviderMissing, match="'cuda' is not available"):
        make_session(exported[1], "cuda", intra_op_threads=1)
    with pytest.raises(ProviderMissing):
        benchmark(exported[1], "cuda", runs=1, warmup=0)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA really present")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_silent_fallback_to_cpu_is_refused(exported, monkeypatch):
    # Claim CUDA is there: onnxruntime then quietly builds a CPU session, which must not pass as "cuda".
    monkeypatch.setattr(ort_runtime, "available_providers", lambda: ["cuda", "cpu"])
    with pytest.raises(ProviderMissing, match="could not start CUDAExecutionProvider"):
        make_session(exported[1], "cuda", intra_op_threads=1)


# --- predictor ---------------------------------------------------------------------------------

def test_predictor_round_trip_on_png(exported, tmp_path):
    model, path = exported
    colour = (200, 40, 90)
    png = tmp_path / "solid.png"
    Image.new("RGB", (13, 10), colour).save(png)  # a solid colour stays exact under any resize

    predictor = Predictor(path)
    assert predictor.input_shape == SHAPE and predictor.class_names == CLASSES
    image = predictor.load_image(png)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    assert (image == np.array(colour, dtype=np.uint8)).all()

    x = np.broadcast_to(np.array(colour, np.float32).reshape(1, 3, 1, 1) / 255.0, (1, *SHAPE))
    expected = torch.softmax(torch.from_numpy(torch_logits(model, x)).double(), dim=1)[0]
    (name, prob), = predictor.predict_files([png])
    assert name == CLASSES[int(expected.argmax())]
    assert prob == pytest.approx(float(expected.max()), abs=1e-5)
    assert 1.0 / len(CLASSES) <= prob <= 1.0

    # uint8 NHWC and float NCHW of the same pixels agree
    np.testing.assert_allclose(predictor.probabilities(image[None]), predictor.probabilities(x.copy()), atol=1e-6)
    assert predictor.predict(image[None])[0][0] == name


def test_predictor_rejects_bad_inputs(exported, tmp_path):
    predictor = Predictor(exported[1])
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        predictor.predict(np.full((1, *SHAPE), 255.0, dtype=np.float32))
    with pytest.raises(DataError, match="expects images of shape"):
        predictor.predict(np.zeros((1, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="image not found"):
        predictor.load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image"):
        load_image(tmp_path / "junk.png", SHAPE)


def test_grayscale_loading_converts_channels(tmp_path):
    png = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4), (255, 255, 255)).save(png)
    gray = load_image(png, (1, 6, 5))
    assert gray.shape == (6, 5, 1) and (gray == 255).all()
