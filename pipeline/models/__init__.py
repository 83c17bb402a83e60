"""Model registry: `create_model(arch, num_classes=..., in_chans=..., mean=..., std=...)`.

Importing this package registers every built-in architecture (one module per family).
"""
from __future__ import annotations

from pipeline.models.classifier import ClassifierModel, NormalizeByChannel
from pipeline.models.registry import create_model, list_models, register_model

# Imported for their @register_model side effect.
from pipeline.models import (  # noqa: F401
    imagenet_resnet, preact_resnet, resnet_cifar, small_cnn, vgg, wide_resnet)

__all__ = ["ClassifierModel", "NormalizeByChannel", "create_model", "list_models", "register_model"]
