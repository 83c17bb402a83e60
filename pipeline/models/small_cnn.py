"""Small fast networks: `small_cnn` for tests and the quickstart (about 24k parameters at 10 classes),
`convnet4` for reduced-scale adversarial training on CPU (about 391k parameters)."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.models.registry import register_model
from pipeline.models.weight_init import init_weights


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU layers (16, 32/2, 64), global average pool, Linear.

    Works from 2x2 inputs up, e.g. 1x8x8 sklearn digits and 3x32x32 CIFAR.
    """

    def __init__(self, num_classes: int, in_chans: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_chans, 16, 1), *_conv_bn_relu(16, 32, 2), *_conv_bn_relu(32, 64, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model("small_cnn")
def small_cnn(*, num_classes: int, in_chans: int) -> nn.Module:
    return SmallCNN(num_classes, in_chans)


class ConvNet4(nn.Module):
    """Four conv-BN-ReLU layers (32, 64/2, 128/2, 256/2), global average pool, Linear.

    About 16x the parameters of SmallCNN for about 2.4x its FLOPs (15.3 M multiply-adds at 3x32x32):
    enough capacity to over-fit a 1000-image CIFAR-10 cut under PGD adversarial training, which
    SmallCNN cannot, while an epoch still takes seconds on one CPU core. Works from 8x8 inputs up.
    """

    def __init__(self, num_classes: int, in_chans: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_chans, 32, 1), *_conv_bn_relu(32, 64, 2), *_conv_bn_relu(64, 128, 2),
            *_conv_bn_relu(128, 256, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(256, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model("convnet4")
def convnet4(*, num_classes: int, in_chans: int) -> nn.Module:
    return ConvNet4(num_classes, in_chans)
