"""Checks on what a user hands the deployment commands (`bench`, `predict`) and on numeric flags,
so a wrong file or value is a clear exit-2 error instead of an onnxruntime or PIL traceback."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.engine.errors import UsageError

# Larger than any photo a classifier needs, far smaller than a decompression bomb (PIL's own
# refusal starts at ~179 M pixels, after it may already have allocated gigabytes for ~89 M).
MAX_IMAGE_PIXELS = 40_000_000


def _int_at_least(minimum: int):
    """An argparse type: a whole number >= `minimum`, refused with a message naming the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise UsageError(f"--batch-sizes {text!r}: expected comma-separated whole numbers, e.g. 1,64") from None
    if not sizes or any(b < 1 for b in sizes):
        raise UsageError(f"--batch-sizes {text!r}: every batch size must be >= 1")
    return sizes


def check_onnx_file(path: Path) -> None:
    """The file exists and parses as a valid ONNX model (a truncated or foreign file does not)."""
    if not path.exists():
        raise UsageError(f"{path}: file not found")
    if not path.is_file():
        raise UsageError(f"{path}: not a file")
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError, OSError: all "not a usable model"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path}: not a readable ONNX model (truncated, damaged or another kind of file): "
                         f"{first[:200]}") from None
    if not model.graph.input:
        raise UsageError(f"{path}: the ONNX graph has no inputs")


def check_image(path: Path) -> None:
    """Open the header only: refuse unreadable files and images too large to decode safely."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise UsageError(f"{path}: image not found")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        raise UsageError(f"{path}: refused, the image is a decompression bomb (too many pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read as an image ({exc})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise UsageError(f"{path}: refused, {width}x{height} = {width * height:,} pixels is over the "
                         f"{MAX_IMAGE_PIXELS:,}-pixel limit (a decompression bomb or a mistake)")
