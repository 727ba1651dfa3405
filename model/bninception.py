"""BN-Inception as the authors' code defines it (Cadene's pretrained-models layout).

Layer names are flat attributes (``conv1_7x7_s2``, ``inception_3a_1x1_bn`` ...),
so the state_dict keys match ``bn_inception-52deb4733.pth`` and the authors'
checkpoints. Every Conv2d is followed by its BatchNorm and an in-place ReLU.
"""
from typing import List, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

_BN_MOMENTUM = 0.9


class Block(NamedTuple):
    """Channels of one inception block; ``c1x1 == 0`` marks a reduction block."""

    name: str
    cin: int
    c1x1: int
    c3x3_reduce: int
    c3x3: int
    cd3x3_reduce: int
    cd3x3: int
    pool: str
    pool_proj: int


BLOCKS = (
    Block("3a", 192, 64, 64, 64, 64, 96, "avg", 32),
    Block("3b", 256, 64, 64, 96, 64, 96, "avg", 64),
    Block("3c", 320, 0, 128, 160, 64, 96, "max_s2", 0),
    Block("4a", 576, 224, 64, 96, 96, 128, "avg", 128),
    Block("4b", 576, 192, 96, 128, 96, 128, "avg", 128),
    Block("4c", 576, 160, 128, 160, 128, 160, "avg", 128),
    Block("4d", 608, 96, 128, 192, 160, 192, "avg", 128),
    Block("4e", 608, 0, 128, 192, 192, 256, "max_s2", 0),
    Block("5a", 1056, 352, 192, 320, 160, 224, "avg", 128),
    Block("5b", 1024, 352, 192, 320, 192, 224, "max_s1", 128),
)


def _pool(kind: str) -> nn.Module:
    if kind == "avg":
        return nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
    if kind == "max_s2":
        return nn.MaxPool2d((3, 3), stride=(2, 2), ceil_mode=True)
    return nn.MaxPool2d((3, 3), stride=(1, 1), padding=(1, 1), ceil_mode=True)


class BNInception(nn.Module):
    """(N, 3, H, W) BGR x255 mean-subtracted images -> (N, 1024, h, w) features; see ``logits``."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._branches: List[List[str]] = []
        self._conv("conv1_7x7_s2", 3, 64, 7, stride=2, padding=3)
        self.pool1_3x3_s2 = nn.MaxPool2d((3, 3), stride=(2, 2), ceil_mode=True)
        self._conv("conv2_3x3_reduce", 64, 64, 1)
        self._conv("conv2_3x3", 64, 192, 3, padding=1)
        self.pool2_3x3_s2 = nn.MaxPool2d((3, 3), stride=(2, 2), ceil_mode=True)
        for block in BLOCKS:
            self._inception(block)
        self.global_pool = nn.AvgPool2d(7, stride=1, ceil_mode=True, count_include_pad=True)
        self.last_linear = nn.Linear(1024, num_classes)

    def _conv(self, name: str, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> None:
        setattr(self, name, nn.Conv2d(cin, cout, k, stride=stride, padding=padding))
        setattr(self, name + "_bn", nn.BatchNorm2d(cout, eps=1e-5, momentum=_BN_MOMENTUM))
        setattr(self, name + "_relu", nn.ReLU(inplace=True))

    def _inception(self, b: Block) -> None:
        prefix = f"inception_{b.name}_"
        stride = 2 if b.c1x1 == 0 else 1
        branches = []
        if b.c1x1:
            self._conv(prefix + "1x1", b.cin, b.c1x1, 1)
            branches.append([prefix + "1x1"])
        self._conv(prefix + "3x3_reduce", b.cin, b.c3x3_reduce, 1)
        self._conv(prefix + "3x3", b.c3x3_reduce, b.c3x3, 3, stride=stride, padding=1)
        branches.append([prefix + "3x3_reduce", prefix + "3x3"])
        self._conv(prefix + "double_3x3_reduce", b.cin, b.cd3x3_reduce, 1)
        self._conv(prefix + "double_3x3_1", b.cd3x3_reduce, b.cd3x3, 3, padding=1)
        self._conv(prefix + "double_3x3_2", b.cd3x3, b.cd3x3, 3, stride=stride, padding=1)
        branches.append([prefix + "double_3x3_reduce", prefix + "double_3x3_1", prefix + "double_3x3_2"])
        setattr(self, prefix + "pool", _pool(b.pool))
        if b.pool_proj:
            self._conv(prefix + "pool_proj", b.cin, b.pool_proj, 1)
            branches.append(["@" + prefix + "pool", prefix + "pool_proj"])
        else:
            branches.append(["@" + prefix + "pool"])
        self._branches.append(branches)

    def _run(self, names: List[str], x: torch.Tensor) -> torch.Tensor:
        for name in names:
            if name.startswith("@"):
                x = getattr(self, name[1:])(x)
            else:
                x = getattr(self, name + "_relu")(getattr(self, name + "_bn")(getattr(self, name)(x)))
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 1024, H/32, W/32) feature map after inception_5b."""
        x = self.pool1_3x3_s2(self._run(["conv1_7x7_s2"], x))
        x = self.pool2_3x3_s2(self._run(["conv2_3x3_reduce", "conv2_3x3"], x))
        for branches in self._branches:
            x = torch.cat([self._run(names, x) for names in branches], dim=1)
        return x

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 1024, 7, 7) -> (N, num_classes) ImageNet logits."""
        return self.last_linear(self.global_pool(features).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


class BNInceptionTrunk(nn.Module):
    """Backbone for the embedding model: (N, 3, H, W) -> (N, 1024, 1, 1) spatially averaged features.

    The network lives under ``.model`` so the keys read ``base.model.<layer>``.
    The ImageNet classifier ``model.last_linear`` stays for those keys (the
    authors' checkpoints hold it) but ``forward`` never uses it, so it is
    frozen: DDP waits for a gradient of every parameter that requires one, and
    Adam never updated it anyway (it gets no gradient), so updates are unchanged.
    """

    output_size = 1024

    def __init__(self):
        super().__init__()
        self.model = BNInception()
        self.model.last_linear.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.model.features(x)
        return F.avg_pool2d(feat, kernel_size=feat.shape[2])
