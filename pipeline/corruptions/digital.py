"""Digital corruptions (contrast, elastic, pixelate, JPEG, saturate) with the CIFAR-10-C parameters."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.corruptions._ops import box_resize, gaussian, hsv_adjust, jpeg_roundtrip
from pipeline.corruptions.catalog import corruption


@corruption("contrast", "digital", [0.75, 0.5, 0.4, 0.3, 0.15], random=False)
def contrast(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * c + mean


# (displacement scale alpha, smoothness sigma, affine jitter), as fractions of the shorter side
@corruption("elastic_transform", "digital", [(0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                                             (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)], random=True)
def elastic_transform(x: np.ndarray, p: tuple, rng: np.random.Generator) -> np.ndarray:
    h, w, channels = x.shape
    side = min(h, w)
    alpha, sigma, jitter = (v * side for v in p)
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")

    # random affine map: three points around the centre move by up to `jitter` px
    centre, arm = np.array([w // 2, h // 2], dtype=np.float64), side // 3
    src = np.array([centre + arm, [centre[0] + arm, centre[1] - arm], centre - arm])
    dst = src + rng.uniform(-jitter, jitter, size=src.shape)
    if arm > 0:
        forward = np.eye(3)
        forward[:2] = np.linalg.solve(np.c_[src, np.ones(3)], dst).T  # (x, y, 1) -> (x', y')
        inverse = np.linalg.inv(forward)
        src_x = inverse[0, 0] * cols + inverse[0, 1] * rows + inverse[0, 2]
        src_y = inverse[1, 0] * cols + inverse[1, 1] * rows + inverse[1, 2]
        x = np.stack([ndimage.map_coordinates(x[..., c], [src_y, src_x], order=1, mode="mirror")
                      for c in range(channels)], axis=-1)

    # smooth random displacement field
    dx = gaussian(rng.uniform(-1.0, 1.0, size=(h, w)), sigma, mode="reflect", truncate=3.0) * alpha
    dy = gaussian(rng.uniform(-1.0, 1.0, size=(h, w)), sigma, mode="reflect", truncate=3.0) * alpha
    return np.stack([ndimage.map_coordinates(x[..., c], [rows + dy, cols + dx], order=1, mode="reflect")
                     for c in range(channels)], axis=-1)


@corruption("pixelate", "digital", [0.95, 0.9, 0.85, 0.75, 0.65], random=False)
def pixelate(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    small = box_resize(x, max(1, int(h * c)), max(1, int(w * c)))
    return box_resize(small, h, w)


@corruption("jpeg_compression", "digital", [80, 65, 58, 50, 40], random=False)
def jpeg_compression(x: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    return jpeg_roundtrip(x, quality)


# (saturation factor, saturation offset)
@corruption("saturate", "digital", [(0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)], random=False,
            note="a grey image has no saturation: it comes back unchanged")
def saturate(x: np.ndarray, p: tuple, rng: np.random.Generator) -> np.ndarray:
    if x.shape[2] == 1:
        return x.copy()
    return hsv_adjust(x, 1, lambda sat: sat * p[0] + p[1])
