"""Frozen BatchNorm: running statistics fixed, affine parameters still trained."""
from torch import nn


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Put every BatchNorm layer of ``model`` in eval mode, in place; returns ``model``."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model
