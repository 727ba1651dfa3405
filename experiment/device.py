"""Where a run computes and how: the device, its backends, mixed precision and moving image batches there.

Every branch that differs between CUDA, MPS and the CPU lives here or names its place in docs.
"""
import os
import random

import torch

from dataset.transforms import DeviceNormalize
from errors import UserError


def select_device(name: str) -> torch.device:
    """The torch device for --device: auto picks CUDA, then MPS, then the CPU; an absent one is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed python's and torch's global generators (CPU and every CUDA device)."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def configure_backends(device: torch.device, deterministic: bool, tf32: bool = True) -> None:
    """cudnn autotuning for speed on CUDA, or, with ``deterministic``, only repeatable algorithms; TF32 or not.

    Deterministic mode sets CUBLAS_WORKSPACE_CONFIG (cuBLAS reads it when it
    starts), ``torch.use_deterministic_algorithms(True)`` and turns cudnn's
    benchmark off, so the same seed gives the same weights on the same machine.
    ``tf32`` lets cuDNN run float32 convolutions in TF32 on Ampere and newer
    GPUs (torch's default; 10-bit mantissa products); off, they are IEEE float32
    as on the authors' torch 1.3. Matrix products stay IEEE (torch's default).
    The flag is set through the API that sets cuDNN's convolutions and RNNs
    alike, so code reading ``cudnn.allow_tf32`` afterwards still can.
    """
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.allow_tf32 = tf32


def to_device(images: torch.Tensor, device: torch.device, normalize: DeviceNormalize | None = None) -> torch.Tensor:
    """Asynchronous copy of an image batch, a uint8 one normalised there by ``normalize``; channels_last on CUDA."""
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        images = normalize(images)
    return images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images


def amp_settings(enabled: bool, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """(autocast dtype, grad scaler) for --amp: bf16 where supported (no scaler needed), else fp16 with a scaler."""
    if not enabled:
        return None, None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16, torch.amp.GradScaler("cuda")
    if device.type == "mps":
        return torch.float16, None
    return torch.bfloat16, None
