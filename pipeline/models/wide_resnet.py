"""WRN-34-10 (spec §7): 3x3 stem to 16 channels, three groups of five wide pre-activation blocks.

Improvement over the reference: adaptive average pooling instead of avg_pool(8), so inputs other
than 32x32 work. Dropout is 0 as in the reference, so there is no dropout layer. The reference
also builds an unused extra block group; it is left out (its weights are never trained), which
gives the spec's 46.14M weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.preact_resnet import make_stage
from pipeline.models.registry import register_model
from pipeline.models.weight_init import init_weights


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_chans: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"wide ResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        self.layer1 = make_stage(16, widths[0], n, 1)
        self.layer2 = make_stage(widths[0], widths[1], n, 2)
        self.layer3 = make_stage(widths[1], widths[2], n, 2)
        self.bn = nn.BatchNorm2d(widths[2])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = self.pool(F.relu(self.bn(out)))
        return self.fc(torch.flatten(out, 1))


@register_model("wrn34_10")
def wrn34_10(*, num_classes: int, in_chans: int) -> nn.Module:
    return WideResNet(34, 10, num_classes, in_chans)
