"""The documented deterministic fill of the reference README (one generator per key)."""
import math
import zlib

import torch
from torch import nn


def fill_tensor(key: str, shape: torch.Size) -> torch.Tensor | None:
    """The value the reference rule gives ``key``; None for ``num_batches_tracked``."""
    if key.endswith("num_batches_tracked"):
        return None
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    r = torch.randn(shape, generator=g)
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g) + 0.5
    if key.endswith("running_mean"):
        return 0.1 * r
    if key.endswith("weight") and len(shape) > 1:
        fan_in = math.prod(shape[1:])
        return r * math.sqrt(2 / fan_in)
    if key.endswith("weight"):
        return 1 + 0.1 * r
    return 0.1 * r


def fill_model(model: nn.Module) -> nn.Module:
    """Overwrite every state_dict entry of ``model`` by the reference rule, in place."""
    state = model.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            new = fill_tensor(key, value.shape)
            if new is not None:
                value.copy_(new)
    return model
