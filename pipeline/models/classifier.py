"""The wrapper every registered network is returned in: normalisation inside, named first/last layers."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class NormalizeByChannel(nn.Module):
    """(x - mean) / std per channel. Buffers `mean` and `std` have shape (1, C, 1, 1).

    Living inside the model means inputs are pixels in [0, 1], so attacks clip and step in pixel
    space, and the statistics are saved with the weights and exported into the ONNX graph.
    """

    def __init__(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != std_t.numel():
            raise ValueError(f"mean has {mean_t.numel()} values but std has {std_t.numel()}")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _first_of(net: nn.Module, kind: type[nn.Module], last: bool = False) -> str:
    names = [name for name, m in net.named_modules() if isinstance(m, kind)]
    if not names:
        raise ValueError(f"{type(net).__name__} has no {kind.__name__} layer")
    return names[-1] if last else names[0]


class ClassifierModel(nn.Module):
    """normalize -> net. Knows its first conv and final linear by qualified name ("net.<...>").

    The names are found in module registration order (first Conv2d, last Linear), so a network
    must define its stem before its other convs and its classifier after every other Linear.
    """

    def __init__(self, net: nn.Module, *, arch: str, num_classes: int, in_chans: int,
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = NormalizeByChannel(mean, std)
        self.net = net
        self.arch = arch
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.first_layer_name = "net." + _first_of(net, nn.Conv2d)
        self.classifier_name = "net." + _first_of(net, nn.Linear, last=True)
        first = self.get_submodule(self.first_layer_name)
        if first.in_channels != in_chans:
            raise ValueError(f"{arch}: first conv takes {first.in_channels} channels, expected {in_chans}")
        if self.get_classifier().out_features != num_classes:
            raise ValueError(f"{arch}: classifier gives {self.get_classifier().out_features} outputs, "
                             f"expected {num_classes}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def get_classifier(self) -> nn.Linear:
        fc = self.get_submodule(self.classifier_name)
        if not isinstance(fc, nn.Linear):
            raise TypeError(f"{self.classifier_name} is a {type(fc).__name__}, not a Linear")
        return fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final Linear by a fresh dense one (same in_features, bias zero) for transfer."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        old = self.get_classifier()
        new = nn.Linear(old.in_features, num_classes, bias=True,
                        device=old.weight.device, dtype=old.weight.dtype)
        nn.init.zeros_(new.bias)
        parent_name, _, child = self.classifier_name.rpartition(".")
        setattr(self.get_submodule(parent_name), child, new)
        self.num_classes = num_classes

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}, in_chans={self.in_chans}"
