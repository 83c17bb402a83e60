"""Weather corruptions (snow, frost, fog, brightness, spatter) with the CIFAR-10-C parameters."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.corruptions._ops import (clipped_zoom, equalize_hist, gaussian, hsv_adjust, luminance, motion_blur, next_pow2,
                   plasma_fractal, spatial_scale, tint)
from pipeline.corruptions.catalog import corruption

WATER = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
MUD = (63 / 255, 42 / 255, 20 / 255)
EMBOSS = np.array([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])


# (flake mean, flake spread, zoom, threshold, streak radius, streak sigma, weight of the original image)
@corruption("snow", "weather", [(0.1, 0.2, 1.0, 0.6, 8, 3, 0.95), (0.1, 0.2, 1.0, 0.5, 10, 4, 0.9),
                                (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                                (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)], random=True,
            note="flakes are streaked by our own motion blur, not ImageMagick's")
def snow(x: np.ndarray, p: tuple, rng: np.random.Generator) -> np.ndarray:
    loc, spread, zoom, threshold, radius, sigma, keep = p
    s = spatial_scale(x)
    flakes = clipped_zoom(rng.normal(loc, spread, size=x.shape[:2])[..., None], zoom)
    flakes[flakes < threshold] = 0.0
    flakes = motion_blur(np.clip(flakes, 0.0, 1.0), radius * s, sigma * s, rng.uniform(-135.0, -45.0))
    # whiten the scene a little, as under an overcast sky
    x = keep * x + (1.0 - keep) * np.maximum(x, luminance(x) * 1.5 + 0.5)
    return x + flakes + np.rot90(flakes, k=2)


def frost_texture(h: int, w: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """A procedural ice texture (H, W, 3) in [0, 1]: needle-like streaks over a cloudy, bluish base."""
    base = plasma_fractal(next_pow2(max(h, w)), 2.0, rng)[:h, :w]
    seeds = (rng.random((h, w)) < 0.05) * rng.uniform(0.5, 1.0, size=(h, w))
    needles = np.zeros((h, w, 1))
    for angle in rng.uniform(0.0, 360.0, size=3):
        needles += motion_blur(seeds[..., None], 3.0 * scale, 1.5 * scale, angle)
    needles /= max(float(needles.max()), 1e-12)
    grain = rng.random((h, w))
    ice = np.clip(0.45 * base + 0.9 * needles[..., 0] + 0.1 * grain, 0.0, 1.0)
    return ice[..., None] * np.array([0.80, 0.90, 1.0])


# (weight of the image, weight of the ice)
@corruption("frost", "weather", [(1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)], random=True,
            note="procedural ice texture instead of the published frost photographs (same blend weights)")
def frost(x: np.ndarray, p: tuple, rng: np.random.Generator) -> np.ndarray:
    ice = frost_texture(x.shape[0], x.shape[1], rng, spatial_scale(x))
    if x.shape[2] == 1:
        ice = luminance(ice)
    return p[0] * x + p[1] * ice


# (haze strength, roughness decay of the plasma fractal)
@corruption("fog", "weather", [(0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)], random=True)
def fog(x: np.ndarray, p: tuple, rng: np.random.Generator) -> np.ndarray:
    strength, decay = p
    h, w = x.shape[:2]
    top = float(x.max())
    haze = plasma_fractal(next_pow2(max(h, w)), decay, rng)[:h, :w, None]
    return (x + strength * haze) * top / (top + strength)


@corruption("brightness", "weather", [0.05, 0.1, 0.15, 0.2, 0.3], random=False)
def brightness(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    if x.shape[2] == 1:  # a grey level is its own HSV value
        return x + c
    return hsv_adjust(x, 2, lambda v: v + c)


def _edges(u8: np.ndarray, low: float = 50.0, high: float = 150.0) -> np.ndarray:
    """Canny edges of a uint8 map: Sobel |gx| + |gy|, thinning across the gradient, hysteresis low / high."""
    f = u8.astype(np.float64)
    gx, gy = ndimage.sobel(f, axis=1, mode="nearest"), ndimage.sobel(f, axis=0, mode="nearest")
    mag = np.abs(gx) + np.abs(gy)
    # keep a pixel only where it is the peak along its gradient direction (4 sectors)
    angle = np.rad2deg(np.arctan2(gy, gx)) % 180.0
    sector = np.select([(angle >= 22.5) & (angle < 67.5), (angle >= 67.5) & (angle < 112.5),
                        (angle >= 112.5) & (angle < 157.5)], [1, 2, 3], 0)
    padded = np.pad(mag, 1)
    h, w = mag.shape

    def shifted(dr: int, dc: int) -> np.ndarray:
        return padded[1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

    peak = np.zeros_like(mag, dtype=bool)
    for k, (dr, dc) in enumerate([(0, 1), (1, 1), (1, 0), (1, -1)]):
        sel = sector == k
        peak |= sel & (mag > shifted(dr, dc)) & (mag >= shifted(-dr, -dc))
    candidate = peak & (mag > low)
    labels, _ = ndimage.label(candidate, structure=np.ones((3, 3)))
    keep = np.unique(labels[candidate & (mag > high)])
    return np.isin(labels, keep[keep > 0])


# (liquid mean, liquid spread, blur sigma, threshold, intensity (water) or mud blur sigma, 0 water | 1 mud)
@corruption("spatter", "weather", [(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                                   (0.65, 0.3, 1.0, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                                   (0.65, 0.1, 0.5, 0.68, 0.6, 1)], random=True,
            note="water drops: our Canny and an exact (not 5x5-mask) distance transform")
def spatter(x: np.ndarray, p: tuple, rng: np.random.Generator) -> np.ndarray:
    loc, spread, sigma, threshold, intensity, mud = p
    s = spatial_scale(x)
    liquid = gaussian(rng.normal(loc, spread, size=x.shape[:2]), sigma * s)
    liquid[liquid < threshold] = 0.0
    if mud:
        m = gaussian((liquid > threshold).astype(np.float64), intensity * s)
        m[m < 0.8] = 0.0
        m = m[..., None]
        return x * (1.0 - m) + tint(x, MUD) * m
    # water: shade each drop by its distance to the drop's rim, embossed
    edges = _edges((np.clip(liquid, 0.0, 1.0) * 255).astype(np.uint8))
    dist = ndimage.distance_transform_edt(~edges) if edges.any() else np.full(liquid.shape, 20.0)
    dist = ndimage.uniform_filter(np.minimum(dist, 20.0), 3, mode="mirror").astype(np.uint8)
    dist = np.clip(np.rint(ndimage.correlate(equalize_hist(dist).astype(np.float64), EMBOSS, mode="mirror")), 0, 255)
    m = liquid * ndimage.uniform_filter(dist, 3, mode="mirror")
    top = float(m.max())
    if top <= 0:
        return x
    return x + (m / top * intensity)[..., None] * tint(x, WATER)
