"""Architectures by name: `@register_model("name")` on a factory, `create_model("name", ...)` to build."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from torch import nn

from pipeline.models.classifier import ClassifierModel

NetFactory = Callable[..., nn.Module]  # fn(*, num_classes: int, in_chans: int) -> bare network

_FACTORIES: dict[str, NetFactory] = {}
# The families register themselves when imported; they are imported on the first look-up (they import
# this module for `register_model`, so not at import time).
_FAMILIES = ("imagenet_resnet", "preact_resnet", "resnet_cifar", "small_cnn", "vgg", "wide_resnet")
_families_loaded = False


def _load_families() -> None:
    global _families_loaded
    if not _families_loaded:
        _families_loaded = True
        for family in _FAMILIES:
            importlib.import_module(f"pipeline.models.{family}")


def register_model(name: str) -> Callable[[NetFactory], NetFactory]:
    """Decorator: enrol a factory `fn(*, num_classes, in_chans) -> nn.Module` under `name`."""

    def decorate(fn: NetFactory) -> NetFactory:
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} is already registered")
        _FACTORIES[name] = fn
        return fn

    return decorate


def list_models() -> list[str]:
    _load_families()
    return sorted(_FACTORIES)


def _per_channel(values: Sequence[float] | None, in_chans: int, what: str) -> list[float]:
    if values is None:
        return [0.5] * in_chans
    values = [float(v) for v in values]
    if len(values) != in_chans:
        raise ValueError(f"{what} has {len(values)} values but in_chans is {in_chans}")
    return values


def create_model(arch: str, *, num_classes: int, in_chans: int = 3,
                 mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> ClassifierModel:
    """Build `arch` wrapped in a ClassifierModel whose input is pixels in [0, 1].

    mean/std default to 0.5 per channel. Raises ValueError for an unknown arch (listing the valid
    names), bad class/channel counts, or mean/std of the wrong length.
    """
    _load_families()
    if arch not in _FACTORIES:
        raise ValueError(f"unknown model {arch!r}; valid names: {', '.join(list_models())}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    mean_l = _per_channel(mean, in_chans, "mean")
    std_l = _per_channel(std, in_chans, "std")
    net = _FACTORIES[arch](num_classes=num_classes, in_chans=in_chans)
    return ClassifierModel(net, arch=arch, num_classes=num_classes, in_chans=in_chans,
                           mean=mean_l, std=std_l)
