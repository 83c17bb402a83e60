"""The built-in architecture names, without torch: `model.arch` is validated against them and
`pipeline models` lists them, so neither imports the networks. A test checks that they are exactly
the names the built-in families register (`pipeline.models.registry`)."""
from __future__ import annotations

import sys

BUILTIN = ("convnet4", "preact_resnet18", "resnet18_cifar", "resnet34_cifar", "resnet50", "small_cnn", "vgg16_bn",
           "wrn34_10")


def known_models() -> list[str]:
    """The built-in names, plus any registered in this process (`register_model` imports the registry)."""
    registry = sys.modules.get("pipeline.models.registry")
    return sorted(set(BUILTIN) | set(registry.list_models() if registry is not None else ()))
