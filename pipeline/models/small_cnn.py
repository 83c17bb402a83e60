"""Small fast networks: `small_cnn` for tests and the quickstart (about 24k parameters at 10 classes),
`convnet4` for reduced-scale adversarial training on CPU (about 391k parameters)."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.models.registry import register_model
from pipeline.models.weight_init import init_weights

# (out channels, stride) of each 3x3 conv-BN-ReLU layer
SMALL_CNN_LAYERS = ((16, 1), (32, 2), (64, 1))
# About 16x SmallCNN's parameters for about 2.4x its FLOPs (15.3 M multiply-adds at 3x32x32): enough
# capacity to over-fit a 1000-image CIFAR-10 cut under PGD adversarial training, which SmallCNN cannot,
# while an epoch still takes seconds on one CPU core.
CONVNET4_LAYERS = ((32, 1), (64, 2), (128, 2), (256, 2))


class PlainCNN(nn.Module):
    """3x3 conv-BN-ReLU layers, global average pool, Linear. Works from 8x8 inputs up (2x2 for
    small_cnn), e.g. 1x8x8 sklearn digits and 3x32x32 CIFAR."""

    def __init__(self, layers: tuple[tuple[int, int], ...], num_classes: int, in_chans: int = 3):
        super().__init__()
        modules: list[nn.Module] = []
        c_in = in_chans
        for c_out, stride in layers:
            modules += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                        nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*modules)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model("small_cnn")
def small_cnn(*, num_classes: int, in_chans: int) -> nn.Module:
    return PlainCNN(SMALL_CNN_LAYERS, num_classes, in_chans)


@register_model("convnet4")
def convnet4(*, num_classes: int, in_chans: int) -> nn.Module:
    return PlainCNN(CONVNET4_LAYERS, num_classes, in_chans)
