"""Apply a corruption to uint8 images, deterministically per (seed, corruption, severity, image index)."""
from __future__ import annotations

import zlib

import numpy as np

from pipeline.corruptions.catalog import SEVERITIES, get


def image_rng(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
    """The generator for one corrupted image: the same image always gets the same noise, in any batch."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(name.encode()), int(severity), int(index)])


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Corrupt one uint8 image, (H, W) or (H, W, C) with C = 1 or 3; returns uint8 of the same shape."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 image, got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ValueError(f"{name}: expected (H, W) or (H, W, 1|3), got shape {image.shape}")
    from pipeline.corruptions._ops import truncate_uint8  # scipy + matplotlib: only when corrupting

    spec = get(name)
    x = image.astype(np.float64)[..., None] / 255.0 if image.ndim == 2 else image.astype(np.float64) / 255.0
    out = spec.fn(x, spec.params[severity - 1], rng)
    out = truncate_uint8(out)
    if out.shape != x.shape:
        raise AssertionError(f"{name} changed the image shape {x.shape} -> {out.shape}")
    return out[..., 0] if image.ndim == 2 else out


def corrupt_images(images: np.ndarray, name: str, severity: int, *, seed: int = 0, start: int = 0) -> np.ndarray:
    """Corrupt (N, H, W, C) uint8 images (the published layout); image i uses index start + i."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected (N, H, W, C) images, got shape {images.shape}")
    out = np.empty_like(images)
    for i, img in enumerate(images):
        out[i] = corrupt(img, name, severity, image_rng(seed, name, severity, start + i))
    return out
