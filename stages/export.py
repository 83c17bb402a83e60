"""export: ONNX model with metadata, accepted only if onnxruntime reproduces torch's logits on real inputs."""
from __future__ import annotations

import torch
from pydantic import Field

from typing import Literal

from exports.onnx_export import export_onnx, to_sparse_initializers
from exports.verify import check_parity
from pipeline.engine.errors import StageFailed
from pipeline.engine.stage import Stage, StageConfig


class ExportConfig(StageConfig):
    opset: int = Field(default=17, ge=17, description="ONNX opset")
    parity_tol: float = Field(default=1e-4, gt=0, description="max |onnxruntime - torch| logit difference allowed")
    parity_samples: int = Field(default=256, gt=0, description="real test images used for the parity check")
    sparse_initializers: Literal["auto", "always", "never"] = Field(
        default="auto", description="also write model.sparse.onnx with zero-laden weights as ONNX sparse_initializers "
                                    "(auto: only when that file is smaller; onnxruntime densifies them at load, "
                                    "so this saves disk and download size, not latency)")


def model_sparsity(model: torch.nn.Module, masks) -> float:
    """Fraction of zero weights over conv and linear weights (masks when present, else exact zeros)."""
    if masks is not None:
        return 1.0 - float(masks.density())
    total = zeros = 0
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            total += mod.weight.numel()
            zeros += int((mod.weight == 0).sum())
    return zeros / max(total, 1)


class Export(Stage):
    Config = ExportConfig
    summary = "ONNX export (dynamic batch, metadata) with an onnxruntime-vs-torch parity check"

    def run(self, ctx) -> None:
        cfg: ExportConfig = ctx.config
        data = ctx.data()
        model, masks, card = ctx.load_input_model()
        model = model.cpu().eval()
        judged = ctx.input.metrics  # an evaluate stage upstream carries SA/RA
        metadata = {
            "arch": card["arch"], "dataset": card.get("dataset"),
            "input_shape": [card["in_chans"], *card["input_size"]],
            "input_range": "[0, 1] RGB pixels, NCHW; normalisation is inside the model",
            "mean": card["mean"], "std": card["std"], "class_names": card["class_names"],
            "sparsity": round(model_sparsity(model, masks), 6),
        }
        for key in ("test_sa", "test_ra", "attack"):
            if key in judged:
                metadata[key] = judged[key]
        path = ctx.dir / "model.onnx"
        export_onnx(model, path, input_shape=tuple(metadata["input_shape"]), metadata=metadata, opset=cfg.opset)

        inputs = data.test_x[: cfg.parity_samples].float() / 255.0
        parity = check_parity(path, model, inputs, tol=cfg.parity_tol)
        ctx.log(f"[{ctx.name}] parity: max |ort - torch| = {parity['max_abs_diff']:.3g} on {parity['n']} test images")
        if not parity["passed"]:
            path.unlink(missing_ok=True)  # a model that does not match is not kept
            raise StageFailed(f"ONNX parity failed: max abs logit difference {parity['max_abs_diff']:.3g} "
                              f"> tolerance {cfg.parity_tol:g} on {parity['n']} test images; no model kept")
        ctx.register_file("model.onnx")
        if cfg.sparse_initializers != "never" and metadata["sparsity"] > 0:
            ctx.record["sparse_onnx"] = self._sparse_copy(ctx, cfg, path, model, inputs)
        ctx.metrics.update({"parity_max_abs_diff": parity["max_abs_diff"], "parity_n": parity["n"],
                            "sparsity": metadata["sparsity"], "onnx_bytes": path.stat().st_size, "opset": cfg.opset})
        ctx.record["onnx_metadata"] = metadata
        ctx.pass_model_through()

    @staticmethod
    def _sparse_copy(ctx, cfg: ExportConfig, dense_path, model, inputs) -> dict:
        sparse_path = ctx.dir / "model.sparse.onnx"
        sizes = to_sparse_initializers(dense_path, sparse_path)
        summary = {k: sizes[k] for k in ("src_bytes", "dst_bytes", "size_ratio", "n_converted")}
        if cfg.sparse_initializers == "auto" and not sizes["smaller"]:
            sparse_path.unlink(missing_ok=True)
            ctx.log(f"[{ctx.name}] sparse initializers would not shrink the file "
                    f"({sizes['dst_bytes']} vs {sizes['src_bytes']} bytes); not kept")
            return {**summary, "kept": False}
        parity = check_parity(sparse_path, model, inputs, tol=cfg.parity_tol)
        if not parity["passed"]:
            sparse_path.unlink(missing_ok=True)
            raise StageFailed(f"model.sparse.onnx parity failed: max abs logit difference {parity['max_abs_diff']:.3g}")
        ctx.register_file("model.sparse.onnx")
        ctx.log(f"[{ctx.name}] model.sparse.onnx: {sizes['dst_bytes']} bytes ({sizes['size_ratio']:.2f}x the dense file)")
        return {**summary, "kept": True, "parity_max_abs_diff": parity["max_abs_diff"]}
