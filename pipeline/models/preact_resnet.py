"""PreActResNet-18: what the reference code builds for "ResNet-18" (spec §7)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.registry import register_model
from pipeline.models.weight_init import init_weights


class PreActBlock(nn.Module):
    """BN-ReLU on the input, then conv3x3(stride) -> BN-ReLU -> conv3x3, plus a shortcut.

    The 1x1 projection shortcut (no BN) reads the pre-activated tensor; the identity shortcut
    reads the raw input. Also the wide-ResNet block (same wiring, wider).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + residual


def make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [PreActBlock(in_planes, planes, stride)]
    layers += [PreActBlock(planes, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class PreActResNet(nn.Module):
    """3x3 stem (no BN/ReLU, no max-pool), 4 pre-activation stages, BN-ReLU-avgpool-Linear head.

    Adaptive average pooling: any input of at least 8x8 works (32x32, 64x64, sklearn digits).
    """

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int, in_chans: int = 3):
        super().__init__()
        widths = (64, 128, 256, 512)
        self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        self.layer1 = make_stage(64, widths[0], blocks[0], 1)
        self.layer2 = make_stage(widths[0], widths[1], blocks[1], 2)
        self.layer3 = make_stage(widths[1], widths[2], blocks[2], 2)
        self.layer4 = make_stage(widths[2], widths[3], blocks[3], 2)
        self.bn = nn.BatchNorm2d(widths[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.pool(F.relu(self.bn(out)))
        return self.fc(torch.flatten(out, 1))


@register_model("preact_resnet18")
def preact_resnet18(*, num_classes: int, in_chans: int) -> nn.Module:
    return PreActResNet((2, 2, 2, 2), num_classes, in_chans)
