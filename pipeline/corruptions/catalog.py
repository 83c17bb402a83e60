"""The registry of corruption types: name, group, the five severity parameters, and the function."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# fn(image (H, W, C) float in [0, 1], parameter of one severity, rng) -> image, any range (clipped later)
CorruptionFn = Callable[[np.ndarray, Any, np.random.Generator], np.ndarray]

# The 15 of CIFAR-10-C / ImageNet-C in their published order, then the 4 extra ones.
STANDARD = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
            "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
            "jpeg_compression")
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL = STANDARD + EXTRA
SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Corruption:
    name: str
    group: str  # noise | blur | weather | digital
    params: tuple  # one entry per severity 1..5
    fn: CorruptionFn
    random: bool  # draws from the generator (else a pure function of the image)
    note: str = ""  # where the implementation departs from the published recipe

    @property
    def standard(self) -> bool:
        return self.name in STANDARD


REGISTRY: dict[str, Corruption] = {}


def corruption(name: str, group: str, params: Sequence, *, random: bool, note: str = ""):
    """Register `fn` under `name`; `params[s - 1]` is handed to it for severity s."""
    if name not in ALL:
        raise ValueError(f"unknown corruption name {name!r}")
    if len(params) != len(SEVERITIES):
        raise ValueError(f"{name}: need {len(SEVERITIES)} severity parameters, got {len(params)}")

    def register(fn: CorruptionFn) -> CorruptionFn:
        REGISTRY[name] = Corruption(name, group, tuple(params), fn, random, note)
        return fn

    return register


def get(name: str) -> Corruption:
    _load()
    if name not in REGISTRY:
        raise KeyError(f"unknown corruption {name!r}; known: {', '.join(ALL)}")
    return REGISTRY[name]


def _load() -> None:
    # the group modules register themselves on import
    from pipeline.corruptions import blur, digital, noise, weather  # noqa: F401
