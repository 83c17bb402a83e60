"""torchvision's ImageNet ResNet-50 (spec §7, the DW pre-training network), built without weights."""
from __future__ import annotations

from torch import nn

from pipeline.models.registry import register_model


@register_model("resnet50")
def resnet50(*, num_classes: int, in_chans: int) -> nn.Module:
    # torchvision.models pulls in torch._dynamo (seconds): imported when the model is built, not listed
    from torchvision.models import resnet50 as tv_resnet50

    net = tv_resnet50(weights=None, num_classes=num_classes)
    if in_chans != 3:
        # Same 7x7/2 stem, only the input channels differ; torchvision's own conv init.
        net.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net
