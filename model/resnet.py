"""ResNet trunks from torchvision: conv1 ... layer4 and avgpool, without fc."""
from torch import nn
import torch
import torchvision

_FEATURE_SIZE = {"resnet18": 512, "resnet50": 2048}
_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")


class ResNetTrunk(nn.Module):
    """(N, 3, H, W) ImageNet-normalised images -> (N, C, 1, 1) pooled features.

    Submodules keep torchvision's names, so keys read ``base.conv1.weight`` ...
    """

    def __init__(self, arch: str):
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        for name in _CHILDREN:
            setattr(self, name, getattr(net, name))
        self.output_size = _FEATURE_SIZE[arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in _CHILDREN:
            x = getattr(self, name)(x)
        return x
