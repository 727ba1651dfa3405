"""How far apart two state_dicts are: the check of device_check.py and of the distributed tests."""
import torch


def flat(state: dict) -> torch.Tensor:
    """Every floating-point tensor of ``state``, in key order, as one float64 CPU vector."""
    return torch.cat([v.detach().cpu().double().flatten() for _, v in sorted(state.items()) if v.is_floating_point()])


def relative(a: dict, b: dict) -> float:
    """|a - b| / |b| over the floating-point tensors of two state_dicts with the same keys."""
    return float((flat(a) - flat(b)).norm() / flat(b).norm())


def identical(a: dict, b: dict) -> bool:
    """The same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
