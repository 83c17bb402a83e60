"""ONNX export with the model card in the metadata; zero-rich weights rewritten as sparse initializers.

Every file is written atomically (pipeline.engine.store.atomic_path): built and checked under a temporary
name in the target folder, fsynced, then renamed, so a crash or a failed check never leaves a half-written
model.onnx behind. `graph_stats` measures what a deployer pays for a file: bytes, parameters, MACs.
"""
from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from pipeline.engine import store

MIN_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Metadata keys the stage writes and the predictor reads.
META_INPUT_SHAPE = "input_shape"
META_CLASS_NAMES = "class_names"
# Lists the metadata keys whose values are JSON, so str values round-trip as str even if they look like JSON.
_JSON_KEYS = "pipeline.json_keys"


def _json_default(value: object) -> object:
    # arrays as lists; everything else as the run store writes it, so metadata and stage.json agree
    if isinstance(value, (np.ndarray, torch.Tensor)) and getattr(value, "ndim", 0) > 0:
        return value.tolist()
    return store._json_default(value)


def _set_metadata(model: onnx.ModelProto, metadata: Mapping[str, object]) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    json_keys = set(json.loads(props.pop(_JSON_KEYS, "[]")))
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metadata keys must be non-empty strings, got {key!r}")
        if key == _JSON_KEYS:
            raise ValueError(f"metadata key {key!r} is reserved")
        if isinstance(value, str):
            props[key] = value
            json_keys.discard(key)
        else:
            try:
                props[key] = json.dumps(value, default=_json_default)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"metadata[{key!r}] cannot be stored as JSON: {exc}") from exc
            json_keys.add(key)
    props[_JSON_KEYS] = json.dumps(sorted(json_keys))
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def read_metadata(path: str | Path) -> dict[str, object]:
    """The model's metadata_props with JSON values decoded (str values stay str).

    Files not written by `export_onnx` have no key list; their values are decoded when they parse as JSON.
    """
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    listed = props.pop(_JSON_KEYS, None)
    json_keys = set(json.loads(listed)) if listed is not None else None
    out: dict[str, object] = {}
    for key, value in props.items():
        if json_keys is None:
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        else:
            out[key] = json.loads(value) if key in json_keys else value
    return out


def export_onnx(model: nn.Module, path: str | Path, *, input_shape: tuple[int, int, int],
                metadata: Mapping[str, object], opset: int = 17, model_version: int = 1,
                doc_string: str = "") -> Path:
    """Export `model` (a copy, in eval mode, fp32 on CPU) to `path` with a dynamic batch axis.

    The graph has one input "input" (N, C, H, W) and one output "logits" (N, classes).
    `metadata` goes into `metadata_props`; `input_shape` is added to it. `model_version` and `doc_string`
    fill the ModelProto fields of the same names (what model registries and Netron show).
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if len(input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise ValueError(f"input_shape must be three positive ints (C, H, W), got {input_shape!r}")
    path = Path(path)
    # A copy so the caller's model keeps its device, mode and dtype.
    net = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    dummy = torch.zeros(1, *input_shape)

    with store.atomic_path(path) as tmp:
        with warnings.catch_warnings():
            # The TorchScript exporter announces its deprecation; dynamo=True would need onnxscript.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                net, (dummy,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        proto = onnx.load(str(tmp))
        _set_metadata(proto, {**metadata, META_INPUT_SHAPE: list(input_shape)})
        proto.model_version = int(model_version)
        proto.doc_string = doc_string
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


def _consumed_as_graph_input(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.input}


def to_sparse_initializers(src: str | Path, dst: str | Path, *, min_sparsity: float = 0.0) -> dict:
    """Copy `src` to `dst` with every float weight (rank >= 2) that has zeros stored as a COO sparse_initializer.

    Indices are INT64 and linearised (shape [nnz]), as the ONNX checker requires, so in fp32 each
    nonzero costs 12 bytes against 4 per dense element: the file only shrinks above ~67% sparsity.
    onnxruntime densifies sparse initializers at load time, so this changes file size, not latency.
    Tensors below `min_sparsity` stay dense. Returns sizes and a per-tensor account.
    """
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    graph_inputs = _consumed_as_graph_input(model)

    kept: list[onnx.TensorProto] = []
    converted: list[dict] = []
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if (init.name in graph_inputs or array.ndim < 2 or not np.issubdtype(array.dtype, np.floating)
                or array.size == 0):
            kept.append(init)
            continue
        flat = array.reshape(-1)
        nz = np.flatnonzero(flat)
        sparsity = 1.0 - nz.size / flat.size
        if sparsity == 0.0 or sparsity < min_sparsity:
            kept.append(init)
            continue
        values = numpy_helper.from_array(flat[nz], name=init.name)
        indices = numpy_helper.from_array(nz.astype(np.int64), name=f"{init.name}.indices")
        model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(array.shape)))
        converted.append({
            "name": init.name, "shape": list(array.shape), "numel": int(flat.size), "nnz": int(nz.size),
            "sparsity": sparsity, "dense_bytes": int(array.nbytes),
            "sparse_bytes": int(nz.size * (array.itemsize + 8)),
        })
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)

    with store.atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
    src_bytes, dst_bytes = src.stat().st_size, dst.stat().st_size
    return {
        "src": str(src), "dst": str(dst), "src_bytes": src_bytes, "dst_bytes": dst_bytes,
        "size_ratio": dst_bytes / src_bytes, "smaller": dst_bytes < src_bytes,
        "min_sparsity": min_sparsity, "n_converted": len(converted), "converted": converted,
    }


def graph_stats(path: str | Path) -> dict:
    """Bytes, parameters (all and non-zero) and per-image MACs of an ONNX classifier, read from its graph.

    MACs follow pipeline.metrics.flops (Conv and Gemm/MatMul weights only), with the output shapes from
    ONNX shape inference at batch 1, so they describe the file as it will run, not the torch module.
    """
    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for sp in graph.sparse_initializer:
        weights[sp.values.name] = _dense_of_sparse(sp)
    dim0 = graph.input[0].type.tensor_type.shape.dim[0]
    dim0.Clear()
    dim0.dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    macs = 0
    for node in graph.node:
        out = shapes.get(node.output[0])
        if node.op_type == "Conv" and node.input[1] in weights and out and None not in out:
            w = weights[node.input[1]]
            macs += int(np.prod(out[1:])) * int(np.prod(w.shape[1:]))
        elif node.op_type in ("Gemm", "MatMul") and out and None not in out:
            w = weights.get(node.input[1])
            if w is not None and w.ndim == 2:
                trans_b = any(a.name == "transB" and a.i for a in node.attribute)
                k = w.shape[1] if trans_b else w.shape[0]
                macs += int(np.prod(out[1:])) * int(k)
    float_params = [w for w in weights.values() if np.issubdtype(w.dtype, np.floating)]
    return {"bytes": path.stat().st_size, "params": int(sum(w.size for w in float_params)),
            "nonzero_params": int(sum(np.count_nonzero(w) for w in float_params)), "macs": int(macs)}


def _dense_of_sparse(sp: onnx.SparseTensorProto) -> np.ndarray:
    values = numpy_helper.to_array(sp.values)
    idx = numpy_helper.to_array(sp.indices)
    dense = np.zeros(int(np.prod(sp.dims)), dtype=values.dtype)
    dense[idx.reshape(-1) if idx.ndim == 1 else np.ravel_multi_index(idx.T, tuple(sp.dims))] = values
    return dense.reshape(tuple(sp.dims))
