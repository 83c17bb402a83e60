"""One initialisation shared by the CIFAR-style families."""
from __future__ import annotations

from torch import nn


def init_weights(net: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs, BN weight 1 / bias 0, zero conv and linear biases.

    Linear weights keep PyTorch's default (uniform, fan_in). Uses the global RNG only, so a
    model built after `torch.manual_seed(s)` is the same every time.
    """
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
