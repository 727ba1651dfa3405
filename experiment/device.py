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
        return torch.device("mps" if mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device auto or cpu")
    if name == "mps" and not mps_available():
        raise UserError("--device mps was asked for but MPS is not available (it needs a Mac with a Metal GPU, "
                        "macOS 12.3 or later and a torch built with MPS); use --device auto or cpu")
    return torch.device(name)


def mps_available() -> bool:
    """Whether Apple's MPS backend can run here."""
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


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


def amp_settings(enabled: bool, device: torch.device) -> "tuple[torch.dtype | None, torch.amp.GradScaler | None]":
    """(autocast dtype, grad scaler) for --amp: bf16 where the hardware has it (no scaler needed), else fp16
    with a scaler.

    CUDA: bf16 from compute capability 8.0 (Ampere) on, fp16 below (V100, T4):
    ``torch.cuda.is_bf16_supported()`` also counts emulated bf16, which is slow
    there. MPS: fp16, the half type every Apple GPU runs natively, with a scaler
    as on CUDA. CPU: bf16.
    """
    if not enabled:
        return None, None
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        return torch.float16, torch.amp.GradScaler("cuda")
    if device.type == "mps":
        return torch.float16, torch.amp.GradScaler("mps")
    return torch.bfloat16, None


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA and MPS run asynchronously), so that a timer reads it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
