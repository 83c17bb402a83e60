"""Model registry: `create_model(arch, num_classes=..., in_chans=..., mean=..., std=...)`.

The built-in architectures (one module per family) register on the first look-up; their names are
listed without torch in `pipeline.models.names`.
"""
from __future__ import annotations

from pipeline.engine.lazy import lazy_exports

# Loaded on first use: the torch-free submodules (names, card metadata, configs) are imported through
# this package by the light commands.
__getattr__, __dir__ = lazy_exports(__name__, {
    "ClassifierModel": "pipeline.models.classifier", "NormalizeByChannel": "pipeline.models.classifier",
    "create_model": "pipeline.models.registry", "list_models": "pipeline.models.registry",
    "register_model": "pipeline.models.registry",
})

__all__ = ["ClassifierModel", "NormalizeByChannel", "create_model", "list_models", "register_model"]
