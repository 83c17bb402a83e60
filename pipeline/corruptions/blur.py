"""Blur corruptions with the CIFAR-10-C parameters; pixel-sized parameters grow with images above 32 px."""
from __future__ import annotations

import numpy as np

from pipeline.corruptions._ops import clipped_zoom, correlate_channels, disk_kernel, gaussian, motion_blur as _motion, spatial_scale
from pipeline.corruptions.catalog import corruption


@corruption("gaussian_blur", "blur", [0.4, 0.6, 0.7, 0.8, 1.0], random=False)
def gaussian_blur(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return gaussian(x, sigma * spatial_scale(x))


# (blur sigma, largest pixel displacement, passes)
@corruption("glass_blur", "blur", [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)], random=True,
            note="no uint8 rounding between the blurs")
def glass_blur(x: np.ndarray, p: tuple, rng: np.random.Generator) -> np.ndarray:
    sigma, delta, passes = p
    s = spatial_scale(x)
    sigma, delta = sigma * s, max(1, int(round(delta * s)))
    x = gaussian(x, sigma)
    h, w = x.shape[:2]
    rows, cols = range(h - delta, delta, -1), range(w - delta, delta, -1)
    # Pixels visited bottom-right to top-left each take the value of a random neighbour. The published
    # sets' "swap" of two numpy views is in effect this one-way copy, so we reproduce the copy. It is
    # tracked as source indices and gathered once.
    src = list(range(h * w))
    for _ in range(passes):
        # upper bound exclusive, as in the published sets (displacements lean up and left)
        shifts = rng.integers(-delta, delta, size=(len(rows) * len(cols), 2)).tolist()
        k = 0
        for r in rows:
            for c in cols:
                dx, dy = shifts[k]
                k += 1
                src[r * w + c] = src[(r + dy) * w + (c + dx)]
    x = x.reshape(h * w, -1)[src].reshape(x.shape)
    return gaussian(x, sigma)


# (disk radius, anti-alias sigma)
@corruption("defocus_blur", "blur", [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)], random=False)
def defocus_blur(x: np.ndarray, p: tuple, rng: np.random.Generator) -> np.ndarray:
    s = spatial_scale(x)
    return correlate_channels(x, disk_kernel(p[0] * s, p[1] * s))


# (radius, sigma); the direction is drawn in [-45, 45] degrees
@corruption("motion_blur", "blur", [(6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5)], random=True,
            note="own implementation of ImageMagick's one-sided motion blur (no Wand/ImageMagick)")
def motion_blur(x: np.ndarray, p: tuple, rng: np.random.Generator) -> np.ndarray:
    s = spatial_scale(x)
    return _motion(x, p[0] * s, p[1] * s, rng.uniform(-45.0, 45.0))


# zoom factors np.arange(1, stop, 0.01): 7, 12, 16, 21 and 26 of them, as in the published sets
@corruption("zoom_blur", "blur", [1.06, 1.11, 1.16, 1.21, 1.26], random=False)
def zoom_blur(x: np.ndarray, stop: float, rng: np.random.Generator) -> np.ndarray:
    factors = np.arange(1.0, stop, 0.01)
    out = np.zeros_like(x)
    for factor in factors:
        out += clipped_zoom(x, float(factor))
    return (x + out) / (len(factors) + 1)
