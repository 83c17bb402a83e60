"""A model card: what is needed to rebuild a model and to use it (travels into stage.json and ONNX metadata)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pipeline.data import DataSplits


def model_card(arch: str, data: DataSplits) -> dict:
    return {
        "arch": arch,
        "num_classes": data.num_classes,
        "in_chans": data.in_chans,
        "input_size": list(data.input_size),
        "mean": [float(m) for m in data.mean],
        "std": [float(s) for s in data.std],
        "class_names": list(data.class_names),
        "dataset": data.name,
    }


def build_model(card: dict) -> torch.nn.Module:
    from pipeline.models import create_model

    return create_model(card["arch"], num_classes=card["num_classes"], in_chans=card["in_chans"],
                        mean=card["mean"], std=card["std"])
