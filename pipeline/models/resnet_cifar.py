"""Post-activation CIFAR ResNets (spec §7): 3x3 stem with BN-ReLU, no max-pool."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.registry import register_model
from pipeline.models.weight_init import init_weights


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, add the shortcut (1x1 conv + BN when the shape changes), ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class CifarResNet(nn.Module):
    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int, in_chans: int = 3):
        super().__init__()
        widths = (64, 128, 256, 512)
        self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, in_planes = [], 64
        for width, n, stride in zip(widths, blocks, (1, 2, 2, 2)):
            layers = [BasicBlock(in_planes, width, stride)]
            layers += [BasicBlock(width, width, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            in_planes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model("resnet18_cifar")
def resnet18_cifar(*, num_classes: int, in_chans: int) -> nn.Module:
    return CifarResNet((2, 2, 2, 2), num_classes, in_chans)


@register_model("resnet34_cifar")
def resnet34_cifar(*, num_classes: int, in_chans: int) -> nn.Module:
    return CifarResNet((3, 4, 6, 3), num_classes, in_chans)
