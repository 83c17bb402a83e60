"""Noise corruptions with the CIFAR-10-C parameters (scale-free: the same at every image size)."""
from __future__ import annotations

import numpy as np

from pipeline.corruptions.catalog import corruption


@corruption("gaussian_noise", "noise", [0.04, 0.06, 0.08, 0.09, 0.10], random=True)
def gaussian_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, std, size=x.shape)


@corruption("shot_noise", "noise", [500, 250, 100, 75, 50], random=True)
def shot_noise(x: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    # Poisson counts at `photons` per unit intensity: fewer photons, more noise
    return rng.poisson(np.clip(x, 0.0, 1.0) * photons) / photons


@corruption("impulse_noise", "noise", [0.01, 0.02, 0.03, 0.05, 0.07], random=True)
def impulse_noise(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    # salt and pepper in equal parts, each value (channel) independently
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    out = x.copy()
    out[hit & salt] = 1.0
    out[hit & ~salt] = 0.0
    return out


@corruption("speckle_noise", "noise", [0.06, 0.10, 0.12, 0.16, 0.20], random=True)
def speckle_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return x + x * rng.normal(0.0, std, size=x.shape)
