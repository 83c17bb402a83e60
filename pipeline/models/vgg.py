"""CIFAR VGG-16-BN (spec §7): 13 conv3x3 (with bias) + BN + ReLU, five 2x2 max-pools, one Linear.

Improvement over the reference: an adaptive average pool to 1x1 before the classifier (the
reference's no-op 1x1 pool makes the flatten 2048-wide at 64x64 and breaks). At 32x32 the
feature map is already 1x1, so the network is unchanged there. Inputs must be at least 32x32.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.models.registry import register_model
from pipeline.models.weight_init import init_weights

VGG16_CHANNELS: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, channels: tuple[int | str, ...], num_classes: int, in_chans: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_chans
        for c in channels:
            if c == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(c), 3, padding=1, bias=True),
                           nn.BatchNorm2d(int(c)), nn.ReLU(inplace=True)]
                c_in = int(c)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model("vgg16_bn")
def vgg16_bn(*, num_classes: int, in_chans: int) -> nn.Module:
    return VGG(VGG16_CHANNELS, num_classes, in_chans)
