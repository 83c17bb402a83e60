"""export: ONNX variants of the model, each accepted only if onnxruntime reproduces torch's logits.

Variants: `masked` (model.onnx: the graph as trained, exact zeros where masked; onnxruntime runs it
as dense), `structured` (model.structured.onnx: every channel that cannot change the logits removed,
so the convolutions really are smaller), `sparse_initializers` (model.sparse.onnx: the smallest dense
graph with zero-laden weights stored sparse; kept only when that makes the file smaller, since
onnxruntime densifies them at load: it saves download size, not latency). Per variant the stage
records file bytes, parameters, MACs counted from the ONNX graph, and the parity error.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from pipeline.engine.errors import StageFailed
from pipeline.engine.stage import Stage, StageConfig

if TYPE_CHECKING:
    import torch

# The implementation (torch, onnx) is imported where it runs: `validate` and `stages` import this module for its Config.

Variant = Literal["masked", "structured", "sparse_initializers"]
FILES = {"masked": "model.onnx", "structured": "model.structured.onnx", "sparse_initializers": "model.sparse.onnx"}
PREPROCESSING = {"layout": "NCHW", "dtype": "float32", "scale": "pixels / 255 -> [0, 1]",
                 "resize": "bilinear to the input_shape height x width, no crop (exports.predict.load_image)",
                 "normalisation": "inside the model (mean/std below)"}


class ExportConfig(StageConfig):
    opset: int = Field(default=17, ge=17, description="ONNX opset")
    variants: list[Variant] = Field(default_factory=lambda: ["masked", "structured", "sparse_initializers"],
                                    min_length=1, description="ONNX files to write; masked is model.onnx")
    parity_tol: float = Field(default=1e-4, gt=0, description="max |onnxruntime - torch| logit difference allowed")
    parity_samples: int = Field(default=256, gt=0, description="real test images used for the parity check")
    sparse_initializers: Literal["auto", "always", "never"] = Field(
        default="auto", description="variant sparse_initializers: keep model.sparse.onnx only when smaller (auto), "
                                    "always, or never write it (same as leaving the variant out)")
    model_version: int = Field(default=1, ge=0, description="ONNX model_version field")


def model_sparsity(model: torch.nn.Module, masks) -> float:
    """Fraction of zero weights over conv and linear weights (masks when present, else exact zeros)."""
    import torch

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
    summary = "ONNX variants (masked, structured, sparse initializers) with metadata, each parity-checked"

    def run(self, ctx) -> None:
        from pipeline.models.structure import shrink_zero_channels, steps_of

        cfg: ExportConfig = ctx.config
        data = ctx.data()
        model, masks, card = ctx.load_input_model()
        model = model.cpu().eval()
        if masks is not None:
            masks.to("cpu").apply_(model)
        shape = (card["in_chans"], *card["input_size"])
        judged = ctx.input.metrics  # an evaluate stage upstream carries SA/RA
        metadata = {
            "arch": card["arch"], "dataset": card.get("dataset"), "input_shape": list(shape),
            "input_range": "[0, 1] RGB pixels, NCHW; normalisation is inside the model",
            "preprocessing": PREPROCESSING, "mean": card["mean"], "std": card["std"],
            "class_names": card["class_names"], "sparsity": round(model_sparsity(model, masks), 6),
            "structure_steps": len(steps_of(model)), "source_stage": ctx.input.model_holder().name,
        }
        for key in ("test_sa", "test_ra", "attack", "test_n", "checkpoint"):
            if key in judged:
                metadata[key] = judged[key]
        inputs = data.test_x[: cfg.parity_samples].float() / 255.0
        variants: dict[str, dict] = {}
        if "masked" in cfg.variants:
            variants["masked"] = self._write(ctx, cfg, "masked", model, model, shape, metadata, inputs)
        if "structured" in cfg.variants:
            small = copy.deepcopy(model)
            shrink = shrink_zero_channels(small, shape)
            ctx.log(f"[{ctx.name}] structured: {shrink['channels_removed']} zero channels removed in "
                    f"{shrink['groups_cut']} of {shrink['groups']} groups; {shrink['constant_channels_kept']} kept "
                    "for a batch-norm constant that reaches a conv")
            # parity against the model as trained: the shrink itself is what is being checked
            variants["structured"] = {**self._write(ctx, cfg, "structured", small, model, shape, metadata, inputs),
                                      "shrink": shrink}
        if "sparse_initializers" in cfg.variants and cfg.sparse_initializers != "never" and metadata["sparsity"] > 0:
            src = "structured" if "structured" in variants else "masked" if "masked" in variants else None
            if src is None:
                raise StageFailed("export: variant sparse_initializers needs masked or structured beside it")
            variants["sparse_initializers"] = self._sparse_copy(ctx, cfg, FILES[src], model, inputs)
        first = variants.get("masked") or variants.get("structured")
        ctx.metrics.update({"parity_max_abs_diff": max(v["parity_max_abs_diff"] for v in variants.values()
                                                       if v.get("kept", True)),
                            "parity_n": first["parity_n"], "sparsity": metadata["sparsity"],
                            "onnx_bytes": first["bytes"], "opset": cfg.opset})
        for name, v in variants.items():
            if v.get("kept", True):
                ctx.metrics[f"{name}_bytes"], ctx.metrics[f"{name}_macs"] = v["bytes"], v["macs"]
        ctx.record["variants"] = variants
        ctx.record["onnx_metadata"] = metadata
        ctx.pass_model_through()

    @staticmethod
    def _write(ctx, cfg: ExportConfig, variant: str, net, reference, shape, metadata, inputs) -> dict:
        from exports.onnx_export import export_onnx, graph_stats
        from exports.verify import check_parity

        path = ctx.dir / FILES[variant]
        doc = (f"{metadata['arch']} classifier on {metadata['dataset']}, variant {variant}, from pipeline stage "
               f"{metadata['source_stage']}. Input: float32 NCHW pixels in [0, 1] resized to {shape[1]}x{shape[2]}; "
               f"output: logits over {len(metadata['class_names'])} classes (softmax for probabilities).")
        export_onnx(net, path, input_shape=tuple(shape), metadata={**metadata, "variant": variant}, opset=cfg.opset,
                    model_version=cfg.model_version, doc_string=doc)
        parity = check_parity(path, reference, inputs, tol=cfg.parity_tol)
        ctx.log(f"[{ctx.name}] {FILES[variant]}: parity max |ort - torch| = {parity['max_abs_diff']:.3g} "
                f"on {parity['n']} test images")
        if not parity["passed"]:
            path.unlink(missing_ok=True)  # a model that does not match is not kept
            raise StageFailed(f"ONNX parity failed for {FILES[variant]}: max abs logit difference "
                              f"{parity['max_abs_diff']:.3g} > tolerance {cfg.parity_tol:g} on {parity['n']} "
                              "test images; no model kept")
        ctx.register_file(FILES[variant])
        return {"file": FILES[variant], **graph_stats(path), "parity_max_abs_diff": parity["max_abs_diff"],
                "parity_n": parity["n"]}

    @staticmethod
    def _sparse_copy(ctx, cfg: ExportConfig, src_file: str, model, inputs) -> dict:
        from exports.onnx_export import graph_stats, to_sparse_initializers
        from exports.verify import check_parity

        sparse_path = ctx.dir / FILES["sparse_initializers"]
        sizes = to_sparse_initializers(ctx.dir / src_file, sparse_path)
        summary = {"source": src_file, **{k: sizes[k] for k in ("src_bytes", "dst_bytes", "size_ratio", "n_converted")}}
        if cfg.sparse_initializers == "auto" and not sizes["smaller"]:
            sparse_path.unlink(missing_ok=True)
            ctx.log(f"[{ctx.name}] sparse initializers would not shrink {src_file} "
                    f"({sizes['dst_bytes']} vs {sizes['src_bytes']} bytes); not kept")
            return {**summary, "kept": False}
        parity = check_parity(sparse_path, model, inputs, tol=cfg.parity_tol)
        if not parity["passed"]:
            sparse_path.unlink(missing_ok=True)
            raise StageFailed(f"model.sparse.onnx parity failed: max abs logit difference {parity['max_abs_diff']:.3g}")
        ctx.register_file(FILES["sparse_initializers"])
        ctx.log(f"[{ctx.name}] model.sparse.onnx: {sizes['dst_bytes']} bytes ({sizes['size_ratio']:.2f}x {src_file})")
        return {**summary, "kept": True, "file": FILES["sparse_initializers"], **graph_stats(sparse_path),
                "parity_max_abs_diff": parity["max_abs_diff"], "parity_n": parity["n"]}
