"""Classify images with an exported model, using the model card stored in its ONNX metadata.

The models carry their normalisation inside the graph, so the predictor feeds pixels in [0, 1].
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from exports.onnx_export import META_CLASS_NAMES, META_INPUT_SHAPE, read_metadata
from exports.ort_runtime import make_session
from pipeline.engine.errors import DataError


def load_image(path: str | Path, input_shape: Sequence[int]) -> np.ndarray:
    """Read an image as uint8 (H, W, C) with C and (H, W) taken from `input_shape` = (C, H, W).

    The image is resized (bilinear) to exactly H x W without cropping, and converted to RGB
    (C = 3) or grayscale (C = 1).
    """
    channels, height, width = (int(d) for d in input_shape)
    if channels not in (1, 3):
        raise ValueError(f"only 1- or 3-channel models can read image files, input_shape={tuple(input_shape)}")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            if img.size != (width, height):
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {path}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return array[:, :, None] if channels == 1 else array


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """Top-1 predictions from an ONNX classifier written by `export_onnx`."""

    def __init__(self, onnx_path: str | Path, *, provider: str = "cpu", intra_op_threads: int = 1):
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise DataError(f"ONNX model not found: {self.path}")
        self.session = make_session(self.path, provider, intra_op_threads=intra_op_threads)
        self.metadata = read_metadata(self.path)
        self._input_name = self.session.get_inputs()[0].name

        shape = self.metadata.get(META_INPUT_SHAPE)
        if shape is None:  # a model exported elsewhere: fall back to the graph's fixed dims
            shape = self.session.get_inputs()[0].shape[1:]
        if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
            raise DataError(f"{self.path}: cannot tell the input shape (C, H, W); metadata has {shape!r}")
        self.input_shape: tuple[int, int, int] = tuple(shape)

        names = self.metadata.get(META_CLASS_NAMES)
        if names is None:
            n = self.session.get_outputs()[0].shape[-1]
            if not isinstance(n, int):
                raise DataError(f"{self.path}: no class_names metadata and no fixed number of outputs")
            names = [str(i) for i in range(n)]
        n_out = self.session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and len(names) != n_out:
            raise DataError(f"{self.path}: metadata names {len(names)} classes but the model has {n_out} outputs")
        self.class_names: list[str] = [str(c) for c in names]

    def load_image(self, path: str | Path) -> np.ndarray:
        """An image file as uint8 (H, W, C) at this model's input size and channels."""
        return load_image(path, self.input_shape)

    def _to_input(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype == np.uint8:
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4:
                raise DataError(f"uint8 images must be (N, H, W, C), got shape {images.shape}")
            x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        elif np.issubdtype(images.dtype, np.floating):
            x = images[None] if images.ndim == 3 else images
            if x.ndim != 4:
                raise DataError(f"float images must be (N, C, H, W) in [0, 1], got shape {images.shape}")
            if x.size and (x.min() < 0.0 or x.max() > 1.0):
                raise DataError(f"float images must be in [0, 1], got values in [{x.min():g}, {x.max():g}]")
            x = x.astype(np.float32)
        else:
            raise DataError(f"images must be uint8 NHWC or float NCHW in [0, 1], got dtype {images.dtype}")
        if tuple(x.shape[1:]) != self.input_shape:
            raise DataError(f"{self.path} expects images of shape (C, H, W) = {self.input_shape}, "
                            f"got {tuple(x.shape[1:])} (use load_image to resize)")
        return np.ascontiguousarray(x)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax over classes, shape (N, classes)."""
        logits = self.session.run(None, {self._input_name: self._to_input(images)})[0]
        return _softmax(logits.astype(np.float64))

    def predict(self, images: np.ndarray) -> list[tuple[str, float]]:
        """(class name, probability) of the top class for each image."""
        probs = self.probabilities(images)
        top = probs.argmax(axis=1)
        return [(self.class_names[k], float(probs[i, k])) for i, k in enumerate(top)]

    def predict_files(self, paths: Sequence[str | Path]) -> list[tuple[str, float]]:
        """`predict` on image files, loaded and resized with `load_image`."""
        if not paths:
            return []
        return self.predict(np.stack([self.load_image(p) for p in paths]))
